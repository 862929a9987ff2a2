/* contact_sheet.h — a grid of small images written as one PNG, so a person can look at what flows
 * through a pipe (moco-inspect --png).
 *
 * Images are u8 HWC with 1 (grey) or 3 (RGB) channels; each is shrunk by an integer box filter to
 * fit a square tile and placed left to right, top to bottom. Memory is bounded by the tile size
 * times the image limit given at creation. */
#ifndef MOCO_CONTACT_SHEET_H
#define MOCO_CONTACT_SHEET_H

#include <stdint.h>

#include "error.h"

typedef struct contact_sheet contact_sheet;

contact_sheet *contact_sheet_new(int tile, int max_images, moco_error *err);
void contact_sheet_free(contact_sheet *s);
/* Add one image; returns 0 when added, 1 when the sheet is already full, MOCO_ERR on a bad shape. */
int contact_sheet_add(contact_sheet *s, const uint8_t *pixels, int height, int width, int channels,
                      moco_error *err);
int contact_sheet_count(const contact_sheet *s);
/* Write the grid (columns = ceil(sqrt(count))) as an RGB PNG, atomically (temporary + rename). */
int contact_sheet_write_png(const contact_sheet *s, const char *path, moco_error *err);

#endif
