/* enhance.h — the photometric operations of the MoCo augmentation, exactly as torchvision 0.14
 * computes them on PIL images (functional_pil.py over Pillow 9.4's ImageEnhance, Blend.c,
 * Convert.c and BoxBlur.c).
 *
 * Images are u8 HWC, 3 channels (RGB) unless said otherwise, changed in place. Factors follow
 * torchvision: brightness/contrast/saturation factor 1 leaves the image as it is, 0 gives black /
 * mean grey / greyscale; hue shifts by hue_factor in [-0.5, 0.5] of a full turn. */
#ifndef MOCO_ENHANCE_H
#define MOCO_ENHANCE_H

#include <stdint.h>

#include "error.h"

/* ImageEnhance.Brightness: blend with black. */
void enhance_brightness(uint8_t *rgb, int height, int width, float factor);
/* ImageEnhance.Contrast: blend with the grey level int(mean of the L image + 0.5). */
void enhance_contrast(uint8_t *rgb, int height, int width, float factor);
/* The same two on an "L" (channels 1) or "RGB" (channels 3) image: for "L", convert("L") is the
 * image itself, so Contrast's mean is that of the grey values. */
void enhance_brightness_channels(uint8_t *pixels, int height, int width, int channels, float factor);
void enhance_contrast_channels(uint8_t *pixels, int height, int width, int channels, float factor);
/* ImageEnhance.Color: blend with the image's L version (as RGB). */
void enhance_saturation(uint8_t *rgb, int height, int width, float factor);
/* functional_pil.adjust_hue: to PIL's HSV, add uint8(hue_factor * 255) to H with wrap-around,
 * back to RGB. */
void enhance_hue(uint8_t *rgb, int height, int width, float hue_factor);
/* rgb_to_grayscale with 3 output channels: PIL's L (ITU-R 601 luma) replicated. */
void enhance_grayscale(uint8_t *rgb, int height, int width);
/* ImageFilter.GaussianBlur(radius = sigma): Pillow's extended box blur, 3 passes each way, edges
 * extended. channels 1 or 3. scratch: at least height * width * channels bytes, or NULL to allocate. */
int enhance_gaussian_blur(uint8_t *pixels, int height, int width, int channels, float sigma, uint8_t *scratch,
                          moco_error *err);
/* Mirror left-right (RandomHorizontalFlip). channels 1..4. */
void enhance_flip(uint8_t *pixels, int height, int width, int channels);

#endif
