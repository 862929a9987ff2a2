/* augment.h — MoCo's view augmentation: recipes, their random parameters, and making views.
 *
 * A recipe is data (augment_recipe), so the small-image recipe is a command line, not code. Every
 * random choice for one view is drawn first, from a Philox stream keyed by (seed, epoch, sample,
 * view) (rng.h), into a view_params; making the view is then deterministic. That is what makes
 * the output the same bytes whatever the thread count, and lets one decode serve both views:
 * the crops are known before the image is decoded.
 *
 * The order of operations and their semantics are torchvision 0.14's on PIL images (DESIGN §4):
 * v2 = RandomResizedCrop(size, scale 0.2-1) -> ColorJitter(0.4,0.4,0.4,0.1) p 0.8 (ops in random
 * order) -> RandomGrayscale p 0.2 -> GaussianBlur sigma U[0.1,2] p 0.5 -> flip p 0.5;
 * v1 = RandomResizedCrop -> RandomGrayscale p 0.2 -> ColorJitter(0.4,0.4,0.4,0.4) always -> flip;
 * lincls = RandomResizedCrop(size, scale 0.08-1) -> flip; eval = Resize(resize) -> CenterCrop(size).
 * Normalisation (mean/std) is left to the consumer: views travel as u8. */
#ifndef MOCO_AUGMENT_H
#define MOCO_AUGMENT_H

#include <stdint.h>

#include "error.h"
#include "image.h"
#include "rng.h"

typedef struct {
    char name[16];
    int size;                  /* output side */
    int eval;                  /* 1: resize short side to `resize`, centre crop `size`; no randomness */
    int resize;
    double scale[2], ratio[2]; /* RandomResizedCrop: area fraction, aspect (w/h) range */
    double jitter_p;           /* probability of applying ColorJitter */
    float brightness, contrast, saturation, hue; /* ColorJitter strengths (0: op off) */
    double grayscale_p;
    int grayscale_first;       /* v1: RandomGrayscale before ColorJitter */
    double blur_p;
    double blur_sigma[2];
    double flip_p;
    int exact;                 /* decode at full size, as torchvision does (no DCT-scaled decode) */
} augment_recipe;

/* Fill r with the named recipe (v2, v1, lincls, eval) at output side `size`; MOCO_ERR if unknown. */
int augment_recipe_named(augment_recipe *r, const char *name, int size, moco_error *err);

typedef struct {
    int x, y, w, h;            /* crop in source pixels */
    int jitter, order[4];      /* ColorJitter applied; order of ops: 0 brightness 1 contrast 2 saturation 3 hue */
    float brightness, contrast, saturation, hue; /* factors (1, 1, 1, 0 = identity) */
    int grayscale, blur, flip;
    float sigma;
} view_params;

/* Draw one view's parameters for a source of height x width. */
void augment_sample(const augment_recipe *r, int height, int width, rng *g, view_params *v);

/* torchvision's RandomResizedCrop.get_params: ten tries, then the centre-crop fallback.
 * Returns 1 when a try succeeded, 0 for the fallback. */
int augment_crop_params(int height, int width, const double scale[2], const double ratio[2], rng *g, int *x,
                        int *y, int *w, int *h);

/* What to decode for these views (unless the recipe is exact): the smallest DCT scale from which
 * every crop still shrinks to the view size, and only the rectangle the crops cover. */
void augment_decode_plan(const augment_recipe *r, const view_params *views, int nviews, int height, int width,
                         image_decode_options *opt);

/* Make one view (size x size x channels, channels of src) from src, a decode of the source that may
 * be reduced (decoded pixel = full-size pixel * scale, scale <= 1) and may cover only a region of it
 * starting at full-size pixel (origin_x, origin_y). scratch: augment_scratch_bytes(r, src) bytes. */
int augment_view(const augment_recipe *r, const view_params *v, const image *src, double scale, double origin_x,
                 double origin_y, uint8_t *out, uint8_t *scratch, moco_error *err);
size_t augment_scratch_bytes(const augment_recipe *r, const image *src);

#endif
