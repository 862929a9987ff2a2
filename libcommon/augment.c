/* augment.c — see augment.h. */
#include "augment.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "enhance.h"
#include "resample.h"

int augment_recipe_named(augment_recipe *r, const char *name, int size, moco_error *err)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->size = size;
    r->scale[0] = 0.2, r->scale[1] = 1.0;
    r->ratio[0] = 3.0 / 4.0, r->ratio[1] = 4.0 / 3.0;
    r->flip_p = 0.5;
    if (!strcmp(name, "v2")) {
        r->jitter_p = 0.8;
        r->brightness = r->contrast = r->saturation = 0.4f;
        r->hue = 0.1f;
        r->grayscale_p = 0.2;
        r->blur_p = 0.5;
        r->blur_sigma[0] = 0.1, r->blur_sigma[1] = 2.0;
    } else if (!strcmp(name, "v1")) {
        r->jitter_p = 1.0;
        r->brightness = r->contrast = r->saturation = r->hue = 0.4f;
        r->grayscale_p = 0.2;
        r->grayscale_first = 1;
    } else if (!strcmp(name, "lincls")) {
        r->scale[0] = 0.08; /* RandomResizedCrop's default */
    } else if (!strcmp(name, "eval")) {
        r->eval = 1;
        r->flip_p = 0;
        r->resize = size * 256 / 224; /* Resize(256) + CenterCrop(224), kept in proportion */
    } else {
        return moco_fail(err, "unknown recipe '%s' (v2, v1, lincls or eval)", name);
    }
    return MOCO_OK;
}

int augment_crop_params(int height, int width, const double scale[2], const double ratio[2], rng *g, int *x,
                        int *y, int *w, int *h)
{
    double area = (double)height * width;
    double log_lo = log(ratio[0]), log_hi = log(ratio[1]);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target_area = area * rng_range(g, scale[0], scale[1]);
        double aspect = exp(rng_range(g, log_lo, log_hi));
        /* Python's round() is half-to-even, as rint() in the default rounding mode */
        int cw = (int)rint(sqrt(target_area * aspect));
        int ch = (int)rint(sqrt(target_area / aspect));
        if (cw > 0 && cw <= width && ch > 0 && ch <= height) {
            *y = (int)rng_below(g, (uint32_t)(height - ch + 1));
            *x = (int)rng_below(g, (uint32_t)(width - cw + 1));
            *w = cw;
            *h = ch;
            return 1;
        }
    }
    /* Fallback to a central crop of the allowed aspect range */
    double in_ratio = (double)width / height;
    if (in_ratio < ratio[0]) {
        *w = width;
        *h = (int)rint(*w / ratio[0]);
    } else if (in_ratio > ratio[1]) {
        *h = height;
        *w = (int)rint(*h * ratio[1]);
    } else {
        *w = width;
        *h = height;
    }
    *y = (height - *h) / 2;
    *x = (width - *w) / 2;
    return 0;
}

void augment_sample(const augment_recipe *r, int height, int width, rng *g, view_params *v)
{
    memset(v, 0, sizeof *v);
    v->brightness = v->contrast = v->saturation = 1.0f;
    for (int i = 0; i < 4; i++)
        v->order[i] = i;
    if (r->eval) {
        v->x = v->y = 0;
        v->w = width;
        v->h = height;
        return;
    }
    augment_crop_params(height, width, r->scale, r->ratio, g, &v->x, &v->y, &v->w, &v->h);
    /* torchvision draws in pipeline order; the order matters only for reproducing its streams,
     * which we do not (our generator is Philox), but keeping it makes the recipe easy to follow. */
    if (r->grayscale_first && r->grayscale_p > 0)
        v->grayscale = rng_uniform(g) < r->grayscale_p;
    if (r->jitter_p > 0 && rng_uniform(g) < r->jitter_p) {
        v->jitter = 1;
        for (int i = 3; i > 0; i--) { /* torch.randperm(4) */
            int j = (int)rng_below(g, (uint32_t)(i + 1));
            int t = v->order[i];
            v->order[i] = v->order[j];
            v->order[j] = t;
        }
        if (r->brightness > 0)
            v->brightness = (float)rng_range(g, fmax(0, 1 - r->brightness), 1 + r->brightness);
        if (r->contrast > 0)
            v->contrast = (float)rng_range(g, fmax(0, 1 - r->contrast), 1 + r->contrast);
        if (r->saturation > 0)
            v->saturation = (float)rng_range(g, fmax(0, 1 - r->saturation), 1 + r->saturation);
        if (r->hue > 0)
            v->hue = (float)rng_range(g, -r->hue, r->hue);
    }
    if (!r->grayscale_first && r->grayscale_p > 0)
        v->grayscale = rng_uniform(g) < r->grayscale_p;
    if (r->blur_p > 0 && rng_uniform(g) < r->blur_p) {
        v->blur = 1;
        v->sigma = (float)rng_range(g, r->blur_sigma[0], r->blur_sigma[1]);
    }
    if (r->flip_p > 0)
        v->flip = rng_uniform(g) < r->flip_p;
}

void augment_decode_plan(const augment_recipe *r, const view_params *views, int nviews, int height, int width,
                         image_decode_options *opt)
{
    if (r->exact || r->eval)
        return;
    double need = 0;
    int x0 = width, y0 = height, x1 = 0, y1 = 0;
    for (int k = 0; k < nviews; k++) {
        const view_params *v = &views[k];
        need = fmax(need, fmax((double)r->size / v->w, (double)r->size / v->h));
        x0 = v->x < x0 ? v->x : x0, y0 = v->y < y0 ? v->y : y0;
        x1 = v->x + v->w > x1 ? v->x + v->w : x1, y1 = v->y + v->h > y1 ? v->y + v->h : y1;
    }
    opt->min_height = (int)ceil(height * need);
    opt->min_width = (int)ceil(width * need);
    opt->region_x = x0, opt->region_y = y0, opt->region_w = x1 - x0, opt->region_h = y1 - y0;
}

size_t augment_scratch_bytes(const augment_recipe *r, const image *src)
{
    size_t view = (size_t)r->size * r->size * (size_t)src->channels;
    size_t resized = 0;
    if (r->eval) {
        int rh, rw;
        resize_short_side(src->height, src->width, r->resize, &rh, &rw);
        resized = (size_t)rh * rw * (size_t)src->channels;
    }
    return (view > resized ? view : resized) + 64;
}

static void colour_ops(const view_params *v, uint8_t *px, int size, int channels)
{
    for (int k = 0; k < 4; k++) {
        switch (v->order[k]) {
        case 0:
            if (v->brightness != 1.0f)
                enhance_brightness_channels(px, size, size, channels, v->brightness);
            break;
        case 1:
            if (v->contrast != 1.0f)
                enhance_contrast_channels(px, size, size, channels, v->contrast);
            break;
        case 2: /* saturation and hue leave a grey (L) image as it is, in PIL and torchvision */
            if (v->saturation != 1.0f && channels == 3)
                enhance_saturation(px, size, size, v->saturation);
            break;
        case 3:
            if (v->hue != 0.0f && channels == 3)
                enhance_hue(px, size, size, v->hue);
            break;
        }
    }
}

int augment_view(const augment_recipe *r, const view_params *v, const image *src, double scale, double origin_x,
                 double origin_y, uint8_t *out, uint8_t *scratch, moco_error *err)
{
    int c = src->channels, size = r->size;
    size_t stride = (size_t)src->width * c;
    if (r->eval) {
        /* Resize(resize) then CenterCrop(size), exactly: resize the whole image, copy the middle */
        int rh, rw;
        resize_short_side(src->height, src->width, r->resize, &rh, &rw);
        if (rh < size || rw < size)
            return moco_fail(err, "eval: resized %dx%d image is smaller than the %d crop", rw, rh, size);
        if (resample(src->pixels, src->height, src->width, c, NULL, scratch, rh, rw, RESAMPLE_BILINEAR, err))
            return MOCO_ERR;
        int top = (int)rint((rh - size) / 2.0), left = (int)rint((rw - size) / 2.0);
        for (int y = 0; y < size; y++)
            memcpy(out + (size_t)y * size * c, scratch + ((size_t)(top + y) * rw + left) * c, (size_t)size * c);
        return MOCO_OK;
    }
    /* The crop in decoded pixels. At full size it is an integral window, resized as torchvision's
     * crop-then-resize does (the filter clamped at the crop's edges). From a reduced decode it is
     * a fractional box inside the smallest window of whole pixels around it. */
    double x0 = (v->x - origin_x) * scale, y0 = (v->y - origin_y) * scale;
    double x1 = (v->x + v->w - origin_x) * scale, y1 = (v->y + v->h - origin_y) * scale;
    int wx0 = (int)floor(x0), wy0 = (int)floor(y0), wx1 = (int)ceil(x1), wy1 = (int)ceil(y1);
    if (wx0 < 0)
        wx0 = 0;
    if (wy0 < 0)
        wy0 = 0;
    if (wx1 > src->width)
        wx1 = src->width;
    if (wy1 > src->height)
        wy1 = src->height;
    if (wx1 <= wx0 || wy1 <= wy0)
        return moco_fail(err, "crop (%d,%d %dx%d) lies outside the decoded image", v->x, v->y, v->w, v->h);
    const uint8_t *window = src->pixels + (size_t)wy0 * stride + (size_t)wx0 * c;
    double box[4] = {x0 - wx0, y0 - wy0, x1 - wx0, y1 - wy0};
    for (int i = 0; i < 4; i++) /* keep the box inside the window despite rounding */
        box[i] = fmax(0.0, fmin(box[i], i % 2 ? wy1 - wy0 : wx1 - wx0));
    int integral = box[0] == 0 && box[1] == 0 && box[2] == wx1 - wx0 && box[3] == wy1 - wy0;
    int (*resize)(const uint8_t *, size_t, int, int, int, const double *, uint8_t *, int, int, resample_filter,
                  moco_error *) = r->exact ? resample_window : resample_window_fast;
    if (resize(window, stride, wy1 - wy0, wx1 - wx0, c, integral ? NULL : box, out, size, size, RESAMPLE_BILINEAR,
               err))
        return MOCO_ERR;
    if (v->grayscale && r->grayscale_first && c == 3)
        enhance_grayscale(out, size, size);
    if (v->jitter)
        colour_ops(v, out, size, c);
    if (v->grayscale && !r->grayscale_first && c == 3)
        enhance_grayscale(out, size, size);
    if (v->blur && enhance_gaussian_blur(out, size, size, c, v->sigma, scratch, err))
        return MOCO_ERR;
    if (v->flip)
        enhance_flip(out, size, size, c);
    return MOCO_OK;
}
