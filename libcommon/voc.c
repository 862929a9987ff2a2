/* voc.c — Pascal VOC detection evaluation (see voc.h): annotations parsed with expat, detections
 * from devkit result files or a tensor stream, and the metric of detectron2's voc_eval/voc_ap.
 *
 * Where a line reproduces a detail of detectron2's Python (pascal_voc_evaluation.py) or numpy, the
 * comment says which: the results must match that code to the last bit, not only to rounding. */
#include "voc.h"

#include <errno.h>
#include <expat.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"

const char *const voc_default_classes[VOC_NUM_CLASSES] = {
    "aeroplane", "bicycle", "bird",  "boat",      "bottle", "bus",         "car",
    "cat",       "chair",   "cow",   "diningtable", "dog",  "horse",       "motorbike",
    "person",    "pottedplant", "sheep", "sofa",  "train",  "tvmonitor",
};

enum {
    MAX_XML_BYTES = 16 << 20,          /* one annotation; VOC's are about 1 KB */
    MAX_TEXT_BYTES = 1024,             /* text of one leaf element we read */
    MAX_FIELD_BYTES = 63,              /* one number in a result file */
};
#define MAX_RESULT_BYTES ((size_t)4 << 30) /* one result file */
#define MAX_COORD 1e9                   /* annotation coordinates: pixels, far below this */

/* ================================ files ================================ */

/* A whole file into a malloc'd, NUL-terminated buffer; errors name the file. */
static int read_file(const char *path, size_t max, char **out, size_t *len, moco_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return moco_fail(err, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            if (cap >= max) {
                fclose(f);
                free(buf);
                return moco_fail(err, "%s: larger than %zu bytes", path, max);
            }
            cap = cap * 2 > max ? max : cap * 2;
            char *grown = realloc(buf, cap + 1);
            if (!grown)
                break;
            buf = grown;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = !buf || ferror(f);
    int saved = errno;
    fclose(f);
    if (bad) {
        free(buf);
        return moco_fail(err, "%s: %s", path, buf ? strerror(saved) : "out of memory");
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return MOCO_OK;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

/* Trim blanks at both ends of [*s, *s + *n). */
static void trim(const char **s, size_t *n)
{
    while (*n && is_blank(**s))
        (*s)++, (*n)--;
    while (*n && is_blank((*s)[*n - 1]))
        (*n)--;
}

/* ================================ dataset ================================ */

static uint64_t hash_id(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int index_rebuild(voc_dataset *ds, size_t nslots)
{
    int *slots = malloc(nslots * sizeof *slots);
    if (!slots)
        return MOCO_ERR;
    for (size_t i = 0; i < nslots; i++)
        slots[i] = -1;
    for (int k = 0; k < ds->nimages; k++) {
        size_t i = hash_id(ds->images[k].id, strlen(ds->images[k].id)) & (nslots - 1);
        while (slots[i] >= 0)
            i = (i + 1) & (nslots - 1);
        slots[i] = k;
    }
    free(ds->slots);
    ds->slots = slots;
    ds->nslots = nslots;
    return MOCO_OK;
}

int voc_dataset_init(voc_dataset *ds, int nclasses, const char *const *classes, moco_error *err)
{
    memset(ds, 0, sizeof *ds);
    if (nclasses < 1 || nclasses > VOC_MAX_CLASSES)
        return moco_fail(err, "%d classes: want 1..%d", nclasses, VOC_MAX_CLASSES);
    if (!(ds->classes = calloc((size_t)nclasses, sizeof *ds->classes)))
        return moco_fail(err, "out of memory");
    for (int c = 0; c < nclasses; c++) {
        if (!classes[c][0] || strlen(classes[c]) > VOC_MAX_NAME) {
            voc_dataset_free(ds);
            return moco_fail(err, "class %d: a name must have 1..%d bytes", c, VOC_MAX_NAME);
        }
        for (int k = 0; k < c; k++)
            if (strcmp(classes[k], classes[c]) == 0) {
                voc_dataset_free(ds);
                return moco_fail(err, "class '%s' is listed twice", classes[c]);
            }
        if (!(ds->classes[c] = strdup(classes[c]))) {
            voc_dataset_free(ds);
            return moco_fail(err, "out of memory");
        }
        ds->nclasses = c + 1;
    }
    if (index_rebuild(ds, 64)) {
        voc_dataset_free(ds);
        return moco_fail(err, "out of memory");
    }
    return MOCO_OK;
}

void voc_dataset_free(voc_dataset *ds)
{
    for (int c = 0; c < ds->nclasses; c++)
        free(ds->classes[c]);
    free(ds->classes);
    for (int i = 0; i < ds->nimages; i++) {
        free(ds->images[i].id);
        free(ds->images[i].objects);
    }
    free(ds->images);
    free(ds->slots);
    memset(ds, 0, sizeof *ds);
}

int voc_class_index(const voc_dataset *ds, const char *name)
{
    for (int c = 0; c < ds->nclasses; c++)
        if (strcmp(ds->classes[c], name) == 0)
            return c;
    return -1;
}

int voc_dataset_find(const voc_dataset *ds, const char *id, size_t len)
{
    if (!ds->nslots)
        return -1;
    for (size_t i = hash_id(id, len) & (ds->nslots - 1);; i = (i + 1) & (ds->nslots - 1)) {
        int k = ds->slots[i];
        if (k < 0)
            return -1;
        if (strlen(ds->images[k].id) == len && memcmp(ds->images[k].id, id, len) == 0)
            return k;
    }
}

int voc_dataset_add_image(voc_dataset *ds, const char *id, moco_error *err)
{
    size_t len = strlen(id);
    if (len == 0 || len > VOC_MAX_NAME)
        return moco_fail(err, "image id '%.64s': want 1..%d bytes", id, VOC_MAX_NAME);
    if (voc_dataset_find(ds, id, len) >= 0)
        return moco_fail(err, "image id '%s' is listed twice", id);
    if (ds->nimages == INT_MAX / 2)
        return moco_fail(err, "too many images");
    if (ds->nimages == ds->cap) {
        int cap = ds->cap ? ds->cap * 2 : 256;
        voc_image *grown = realloc(ds->images, (size_t)cap * sizeof *grown);
        if (!grown)
            return moco_fail(err, "out of memory");
        ds->images = grown;
        ds->cap = cap;
    }
    voc_image *im = &ds->images[ds->nimages];
    memset(im, 0, sizeof *im);
    if (!(im->id = strdup(id)))
        return moco_fail(err, "out of memory");
    ds->nimages++;
    /* Keep the index at most half full; a rebuild places every id again. */
    if ((size_t)ds->nimages * 2 > ds->nslots) {
        if (index_rebuild(ds, ds->nslots * 2)) {
            free(im->id);
            ds->nimages--;
            return moco_fail(err, "out of memory");
        }
    } else {
        size_t i = hash_id(id, len) & (ds->nslots - 1);
        while (ds->slots[i] >= 0)
            i = (i + 1) & (ds->nslots - 1);
        ds->slots[i] = ds->nimages - 1;
    }
    return ds->nimages - 1;
}

int voc_dataset_add_object(voc_dataset *ds, int image, int cls, int difficult, const double box[4],
                           moco_error *err)
{
    if (image < 0 || image >= ds->nimages || cls < 0 || cls >= ds->nclasses)
        return moco_fail(err, "object of image %d, class %d: out of range", image, cls);
    voc_image *im = &ds->images[image];
    if (im->nobjects == im->cap) {
        if (im->cap >= INT_MAX / 2)
            return moco_fail(err, "%s: too many objects", im->id);
        int cap = im->cap ? im->cap * 2 : 4;
        voc_object *grown = realloc(im->objects, (size_t)cap * sizeof *grown);
        if (!grown)
            return moco_fail(err, "out of memory");
        im->objects = grown;
        im->cap = cap;
    }
    voc_object *o = &im->objects[im->nobjects++];
    o->cls = cls;
    o->difficult = difficult != 0;
    memcpy(o->box, box, sizeof o->box);
    return MOCO_OK;
}

/* ================================ annotations ================================ */

/* What the text being captured is for. */
enum { CAP_NONE = -1, CAP_XMIN = 0, CAP_YMIN, CAP_XMAX, CAP_YMAX, CAP_NAME, CAP_DIFFICULT };
static const char *const coord_names[4] = {"xmin", "ymin", "xmax", "ymax"};

typedef struct {
    XML_Parser parser;
    voc_dataset *ds;
    int image;
    const char *file;
    moco_error *err;
    int failed;
    int depth;                /* the root element is depth 1 */
    /* the <object> being read (a child of the root) */
    int in_object, in_bndbox;
    unsigned long object_line;
    int have_name, have_difficult, have_bndbox, have_coord[4];
    int difficult;
    double coord[4];
    char name[VOC_MAX_NAME + 1];
    /* .text of one leaf element: the character data before its first child, as ElementTree's */
    int capture, capture_depth, capture_child;
    unsigned long capture_line;
    char text[MAX_TEXT_BYTES + 1];
    size_t text_len;
    int text_overflow;
} xml_state;

static void xml_fail(xml_state *st, unsigned long line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void xml_fail(xml_state *st, unsigned long line, const char *fmt, ...)
{
    if (st->failed)
        return;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    moco_fail(st->err, "%s: line %lu: %s", st->file, line, msg);
    st->failed = 1;
    XML_StopParser(st->parser, XML_FALSE);
}

/* An integer as Python's int() reads one: blanks around, an optional sign, decimal digits. */
static int parse_int_text(const char *s, size_t n, double limit, double *out)
{
    trim(&s, &n);
    size_t i = 0;
    int neg = 0;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    if (i == n)
        return -1;
    double v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
        if (v > limit)
            return -1;
    }
    *out = neg ? -v : v;
    return 0;
}

static void start_capture(xml_state *st, int what)
{
    st->capture = what;
    st->capture_depth = st->depth;
    st->capture_child = 0;
    st->capture_line = XML_GetCurrentLineNumber(st->parser);
    st->text_len = 0;
    st->text_overflow = 0;
}

static void XMLCALL on_start(void *user, const XML_Char *el, const XML_Char **attrs)
{
    (void)attrs;
    xml_state *st = user;
    st->depth++;
    if (st->capture != CAP_NONE && st->depth > st->capture_depth)
        st->capture_child = 1; /* .text stops at the first child element */
    if (st->depth == 2 && strcmp(el, "object") == 0) {
        st->in_object = 1;
        st->object_line = XML_GetCurrentLineNumber(st->parser);
        st->have_name = st->have_difficult = st->have_bndbox = st->difficult = 0;
        memset(st->have_coord, 0, sizeof st->have_coord);
    } else if (st->in_object && st->depth == 3) {
        /* detectron2 uses obj.find(...): the first child of that name */
        if (strcmp(el, "name") == 0 && !st->have_name)
            start_capture(st, CAP_NAME);
        else if (strcmp(el, "difficult") == 0 && !st->have_difficult)
            start_capture(st, CAP_DIFFICULT);
        else if (strcmp(el, "bndbox") == 0 && !st->have_bndbox)
            st->in_bndbox = 1;
    } else if (st->in_bndbox && st->depth == 4) {
        for (int k = 0; k < 4; k++)
            if (strcmp(el, coord_names[k]) == 0 && !st->have_coord[k])
                start_capture(st, k);
    }
}

static void XMLCALL on_text(void *user, const XML_Char *s, int len)
{
    xml_state *st = user;
    if (st->capture == CAP_NONE || st->depth != st->capture_depth || st->capture_child)
        return;
    if (st->text_len + (size_t)len > MAX_TEXT_BYTES) {
        st->text_overflow = 1;
        return;
    }
    memcpy(st->text + st->text_len, s, (size_t)len);
    st->text_len += (size_t)len;
    st->text[st->text_len] = '\0';
}

static void finish_capture(xml_state *st)
{
    int what = st->capture;
    st->capture = CAP_NONE;
    unsigned long line = st->capture_line;
    const char *el = what == CAP_NAME ? "name" : what == CAP_DIFFICULT ? "difficult" : coord_names[what];
    if (st->text_overflow) {
        xml_fail(st, line, "<%s> holds more than %d bytes of text", el, MAX_TEXT_BYTES);
        return;
    }
    st->text[st->text_len] = '\0';
    if (what == CAP_NAME) {
        /* Compared as it is, as detectron2 compares obj.find("name").text with the class name. */
        if (st->text_len == 0 || st->text_len > VOC_MAX_NAME || memchr(st->text, '\0', st->text_len)) {
            xml_fail(st, line, "<name> must hold 1..%d bytes of text", VOC_MAX_NAME);
            return;
        }
        memcpy(st->name, st->text, st->text_len + 1);
        st->have_name = 1;
    } else {
        double v;
        if (parse_int_text(st->text, st->text_len, what == CAP_DIFFICULT ? 1e9 : MAX_COORD, &v)) {
            xml_fail(st, line, "<%s> '%.40s' is not an integer%s", el, st->text,
                     what == CAP_DIFFICULT ? "" : " (a pixel coordinate)");
            return;
        }
        if (what == CAP_DIFFICULT) {
            st->difficult = v != 0; /* np.array(...).astype(bool) */
            st->have_difficult = 1;
        } else {
            st->coord[what] = v;
            st->have_coord[what] = 1;
        }
    }
}

static void finish_object(xml_state *st)
{
    unsigned long line = st->object_line;
    if (!st->have_name)
        return xml_fail(st, line, "<object> has no <name>");
    int cls = voc_class_index(st->ds, st->name);
    if (cls < 0)
        return xml_fail(st, line, "unknown class '%s' (not one of the %d classes; --classes FILE names them)",
                        st->name, st->ds->nclasses);
    if (!st->have_bndbox)
        return xml_fail(st, line, "<object> '%s' has no <bndbox>", st->name);
    for (int k = 0; k < 4; k++)
        if (!st->have_coord[k])
            return xml_fail(st, line, "<bndbox> of '%s' has no <%s>", st->name, coord_names[k]);
    if (st->coord[2] < st->coord[0] || st->coord[3] < st->coord[1])
        return xml_fail(st, line, "box of '%s' has %s (%.0f,%.0f,%.0f,%.0f as xmin,ymin,xmax,ymax)", st->name,
                        st->coord[2] < st->coord[0] ? "xmax < xmin" : "ymax < ymin", st->coord[0], st->coord[1],
                        st->coord[2], st->coord[3]);
    moco_error e;
    if (voc_dataset_add_object(st->ds, st->image, cls, st->difficult, st->coord, &e))
        return xml_fail(st, line, "%s", e.msg);
}

static void XMLCALL on_end(void *user, const XML_Char *el)
{
    (void)el;
    xml_state *st = user;
    if (st->capture != CAP_NONE && st->depth == st->capture_depth)
        finish_capture(st);
    if (st->in_bndbox && st->depth == 3) {
        st->in_bndbox = 0;
        st->have_bndbox = 1;
    }
    if (st->in_object && st->depth == 2) {
        st->in_object = 0;
        if (!st->failed)
            finish_object(st);
    }
    st->depth--;
}

int voc_parse_annotation(voc_dataset *ds, int image, const char *xml, size_t len, const char *file,
                         moco_error *err)
{
    if (image < 0 || image >= ds->nimages)
        return moco_fail(err, "%s: image %d is not in the dataset", file, image);
    if (len > MAX_XML_BYTES)
        return moco_fail(err, "%s: larger than %d bytes", file, MAX_XML_BYTES);
    xml_state *st = calloc(1, sizeof *st);
    XML_Parser p = XML_ParserCreate(NULL);
    if (!st || !p) {
        free(st);
        if (p)
            XML_ParserFree(p);
        return moco_fail(err, "out of memory");
    }
    st->parser = p;
    st->ds = ds;
    st->image = image;
    st->file = file;
    st->err = err;
    st->capture = CAP_NONE;
    XML_SetUserData(p, st);
    XML_SetElementHandler(p, on_start, on_end);
    XML_SetCharacterDataHandler(p, on_text);
    int ok = XML_Parse(p, xml, (int)len, 1) == XML_STATUS_OK;
    int rc = MOCO_OK;
    if (st->failed)
        rc = MOCO_ERR;
    else if (!ok)
        rc = moco_fail(err, "%s: line %lu: malformed XML: %s", file, (unsigned long)XML_GetCurrentLineNumber(p),
                       XML_ErrorString(XML_GetErrorCode(p)));
    XML_ParserFree(p);
    free(st);
    return rc;
}

int voc_load(voc_dataset *ds, const char *dir, const char *set, moco_error *err)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/ImageSets/Main/%s.txt", dir, set) >= (int)sizeof path)
        return moco_fail(err, "%s: path too long", dir);
    char *text;
    size_t len;
    if (read_file(path, (size_t)1 << 30, &text, &len, err))
        return MOCO_ERR;
    int rc = MOCO_OK;
    long lineno = 0;
    for (const char *s = text, *end = text + len; s < end && rc == MOCO_OK;) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *line = s;
        size_t n = (size_t)((nl ? nl : end) - s);
        s = nl ? nl + 1 : end;
        lineno++;
        trim(&line, &n); /* detectron2: x.strip() */
        if (n == 0)
            continue;
        char id[VOC_MAX_NAME + 1];
        int bad = n > VOC_MAX_NAME || memchr(line, '\0', n);
        for (size_t i = 0; i < n && !bad; i++)
            bad = is_blank(line[i]) || line[i] == '/';
        if (bad) {
            rc = moco_fail(err, "%s: line %ld: '%.*s' is not an image id (one id a line, at most %d bytes)", path,
                           lineno, (int)(n > 64 ? 64 : n), line, VOC_MAX_NAME);
            break;
        }
        memcpy(id, line, n);
        id[n] = '\0';
        if (voc_dataset_add_image(ds, id, err) < 0)
            rc = moco_prefix(err, "%s: line %ld", path, lineno);
    }
    free(text);
    if (rc)
        return rc;
    if (ds->nimages == 0)
        return moco_fail(err, "%s: lists no images", path);
    for (int i = 0; i < ds->nimages; i++) {
        char xml_path[4096];
        if (snprintf(xml_path, sizeof xml_path, "%s/Annotations/%s.xml", dir, ds->images[i].id) >= (int)sizeof xml_path)
            return moco_fail(err, "%s: path too long", dir);
        if (read_file(xml_path, MAX_XML_BYTES, &text, &len, err))
            return moco_prefix(err, "image '%s' of %s", ds->images[i].id, path) ;
        rc = voc_parse_annotation(ds, i, text, len, xml_path, err);
        free(text);
        if (rc)
            return rc;
    }
    return MOCO_OK;
}

int voc_read_classes(const char *path, char ***names, int *n, moco_error *err)
{
    char *text;
    size_t len;
    *names = NULL;
    *n = 0;
    if (read_file(path, (size_t)64 << 20, &text, &len, err))
        return MOCO_ERR;
    char **list = calloc(VOC_MAX_CLASSES, sizeof *list);
    int count = 0, rc = list ? MOCO_OK : moco_fail(err, "out of memory");
    long lineno = 0;
    for (const char *s = text, *end = text + len; s < end && rc == MOCO_OK;) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *line = s;
        size_t k = (size_t)((nl ? nl : end) - s);
        s = nl ? nl + 1 : end;
        lineno++;
        trim(&line, &k);
        if (k == 0 || line[0] == '#')
            continue;
        if (k > VOC_MAX_NAME || memchr(line, '\0', k))
            rc = moco_fail(err, "%s: line %ld: a class name must have 1..%d bytes", path, lineno, VOC_MAX_NAME);
        else if (count == VOC_MAX_CLASSES)
            rc = moco_fail(err, "%s: line %ld: more than %d classes", path, lineno, VOC_MAX_CLASSES);
        else if (!(list[count] = strndup(line, k)))
            rc = moco_fail(err, "out of memory");
        else {
            for (int c = 0; c < count && rc == MOCO_OK; c++)
                if (strcmp(list[c], list[count]) == 0)
                    rc = moco_fail(err, "%s: line %ld: class '%s' is listed twice", path, lineno, list[c]);
            count++;
        }
    }
    free(text);
    if (rc == MOCO_OK && count == 0)
        rc = moco_fail(err, "%s: no class names", path);
    if (rc) {
        voc_free_classes(list, count);
        return rc;
    }
    *names = list;
    *n = count;
    return MOCO_OK;
}

void voc_free_classes(char **names, int n)
{
    if (!names)
        return;
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* ================================ detections ================================ */

void voc_detections_free(voc_detections *d)
{
    free(d->items);
    memset(d, 0, sizeof *d);
}

int voc_detections_add(voc_detections *d, int image, int cls, double score, const double box[4],
                       moco_error *err)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 1024;
        voc_detection *grown = realloc(d->items, cap * sizeof *grown);
        if (!grown)
            return moco_fail(err, "out of memory (%zu detections)", d->n);
        d->items = grown;
        d->cap = cap;
    }
    voc_detection *x = &d->items[d->n++];
    x->image = image;
    x->cls = cls;
    x->score = score;
    memcpy(x->box, box, sizeof x->box);
    return MOCO_OK;
}

/* Check one detection in the devkit convention; 0 or a static reason. */
static const char *bad_detection(double score, const double box[4])
{
    if (isnan(score))
        return "score is NaN";
    for (int k = 0; k < 4; k++)
        if (!isfinite(box[k]))
            return "a box coordinate is not finite";
    if (box[2] < box[0])
        return "xmax < xmin";
    if (box[3] < box[1])
        return "ymax < ymin";
    return NULL;
}

static void note_skipped(voc_detections *out, int64_t count, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note_skipped(voc_detections *out, int64_t count, const char *fmt, ...)
{
    if (out->skipped == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(out->first_skipped, sizeof out->first_skipped, fmt, ap);
        va_end(ap);
    }
    out->skipped += count;
}

int voc_parse_results(const voc_dataset *ds, int cls, const char *text, size_t len, const char *file,
                      const voc_read_options *opt, voc_detections *out, moco_error *err)
{
    int strict = opt && opt->strict;
    int64_t lineno = 0;
    for (const char *s = text, *end = text + len; s < end;) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *line_end = nl ? nl : end;
        const char *p = s;
        s = nl ? nl + 1 : end;
        lineno++;
        /* Fields are separated by blanks (detectron2 splits on single spaces; any run of blanks
         * here, and empty lines are passed over). */
        const char *field[7];
        size_t flen[7];
        int nfields = 0;
        while (p < line_end) {
            while (p < line_end && is_blank(*p))
                p++;
            if (p == line_end)
                break;
            const char *f = p;
            while (p < line_end && !is_blank(*p))
                p++;
            if (nfields < 7) {
                field[nfields] = f;
                flen[nfields] = (size_t)(p - f);
            }
            nfields++;
        }
        if (nfields == 0)
            continue;
        if (nfields != 6)
            return moco_fail(err, "%s: line %lld: %d field%s, want 6: image_id score xmin ymin xmax ymax", file,
                             (long long)lineno, nfields, nfields == 1 ? "" : "s");
        double v[5];
        for (int k = 0; k < 5; k++) {
            char num[MAX_FIELD_BYTES + 1], *num_end;
            size_t n = flen[k + 1];
            if (n > MAX_FIELD_BYTES || memchr(field[k + 1], '\0', n))
                return moco_fail(err, "%s: line %lld: field %d is not a number", file, (long long)lineno, k + 2);
            memcpy(num, field[k + 1], n);
            num[n] = '\0';
            errno = 0;
            v[k] = strtod(num, &num_end);
            if (num_end == num || *num_end || (errno == ERANGE && isinf(v[k])))
                return moco_fail(err, "%s: line %lld: '%s' is not a number", file, (long long)lineno, num);
        }
        const char *why = bad_detection(v[0], v + 1);
        if (why)
            return moco_fail(err, "%s: line %lld: %s", file, (long long)lineno, why);
        size_t idlen = flen[0];
        int image = voc_dataset_find(ds, field[0], idlen);
        if (image < 0) {
            int shown = (int)(idlen > 64 ? 64 : idlen);
            if (strict)
                return moco_fail(err, "%s: line %lld: image id '%.*s' is not in the image set", file,
                                 (long long)lineno, shown, field[0]);
            note_skipped(out, 1, "%s: line %lld: image id '%.*s'", file, (long long)lineno, shown, field[0]);
            continue;
        }
        if (voc_detections_add(out, image, cls, v[0], v + 1, err))
            return MOCO_ERR;
    }
    return MOCO_OK;
}

int voc_read_results(const voc_dataset *ds, const char *prefix, const voc_read_options *opt,
                     voc_detections *out, moco_error *err)
{
    for (int c = 0; c < ds->nclasses; c++) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s%s.txt", prefix, ds->classes[c]) >= (int)sizeof path)
            return moco_fail(err, "%s: path too long", prefix);
        char *text;
        size_t len;
        if (read_file(path, MAX_RESULT_BYTES, &text, &len, err))
            return MOCO_ERR;
        int rc = voc_parse_results(ds, c, text, len, path, opt, out, err);
        free(text);
        if (rc)
            return rc;
    }
    return MOCO_OK;
}

/* What detectron2's evaluator does with a number when it writes its result files:
 * f"{v:.3f}" / f"{v:.1f}", read back with float(). Both sides round correctly. */
static double round_decimals(double v, int decimals)
{
    char buf[400];
    snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return strtod(buf, NULL);
}

int voc_read_stream(const voc_dataset *ds, const char *path, const voc_read_options *opt,
                    voc_detections *out, moco_error *err)
{
    const char *name = !path || strcmp(path, "-") == 0 ? "stdin" : path;
    int strict = opt && opt->strict, exact = opt && opt->exact;
    stream_reader *r = stream_reader_open(path, NULL, err);
    if (!r)
        return MOCO_ERR;
    const stream_header *h = stream_reader_header(r);
    int rc = MOCO_OK;
    int nmap = stream_header_num_classes(h);
    int *map = NULL;
    if (strcmp(stream_header_kind(h), "detections") != 0) {
        rc = moco_fail(err, "%s: a '%s' stream, not detections", name, stream_header_kind(h));
        goto done;
    }
    if (nmap > 0) { /* the stream's class names, mapped by name onto ours (-1: not evaluated) */
        if (!(map = malloc((size_t)nmap * sizeof *map))) {
            rc = moco_fail(err, "out of memory");
            goto done;
        }
        for (int i = 0; i < nmap; i++)
            map[i] = voc_class_index(ds, stream_header_class(h, i));
    }
    stream_record rec;
    int got;
    while ((got = stream_read(r, &rec, err)) == 1) {
        long long record = (long long)stream_reader_records(r);
        const tensor *boxes = stream_record_find(&rec, "boxes"), *scores = stream_record_find(&rec, "scores");
        const tensor *classes = stream_record_find(&rec, "classes"), *tid = stream_record_find(&rec, "image_id");
        char shape[128];
        const char *missing = !boxes ? "boxes" : !scores ? "scores" : !classes ? "classes" : NULL;
        if (missing) {
            rc = moco_fail(err, "%s: record %lld has no tensor '%s' (want boxes, scores, classes)", name, record, missing);
            goto done;
        }
        int64_t n = boxes->rank == 2 ? boxes->dims[0] : -1;
        const tensor *wrong = boxes->dtype != DTYPE_F32 || n < 0 || boxes->dims[1] != 4 ? boxes
                              : scores->dtype != DTYPE_F32 || scores->rank != 1 || scores->dims[0] != n ? scores
                              : (classes->dtype != DTYPE_I64 && classes->dtype != DTYPE_I32) || classes->rank != 1 ||
                                        classes->dims[0] != n ? classes
                              : tid && (tid->dtype != DTYPE_U8 || tid->rank != 1 || tid->dims[0] < 1 ||
                                        tid->dims[0] > VOC_MAX_NAME) ? tid
                                                                     : NULL;
        if (wrong) {
            rc = moco_fail(err, "%s: record %lld: tensor '%s' is %s; want boxes f32 (n,4), scores f32 (n), "
                           "classes i64 or i32 (n), image_id u8 (1..%d)", name, record, wrong->name,
                           tensor_describe(wrong, shape, sizeof shape), VOC_MAX_NAME);
            goto done;
        }
        int image;
        char id[VOC_MAX_NAME + 1];
        if (tid) {
            memcpy(id, tid->data, (size_t)tid->dims[0]);
            id[tid->dims[0]] = '\0';
            image = voc_dataset_find(ds, id, (size_t)tid->dims[0]);
        } else if (rec.sample_id >= 0) {
            snprintf(id, sizeof id, "#%lld", (long long)rec.sample_id);
            image = rec.sample_id < ds->nimages ? (int)rec.sample_id : -1;
        } else {
            rc = moco_fail(err, "%s: record %lld has neither an image_id tensor nor a sample id", name, record);
            goto done;
        }
        if (image < 0) {
            /* an id shown with %s may hold any byte; keep it printable */
            for (char *c = id; *c; c++)
                if ((unsigned char)*c < 32)
                    *c = '?';
            if (strict) {
                rc = moco_fail(err, "%s: record %lld: image id '%s' is not in the image set", name, record, id);
                goto done;
            }
            if (n > 0)
                note_skipped(out, n, "%s: record %lld: image id '%s'", name, record, id);
            continue;
        }
        const float *b = boxes->data, *s = scores->data;
        for (int64_t i = 0; i < n; i++) {
            int64_t c = classes->dtype == DTYPE_I64 ? ((const int64_t *)classes->data)[i]
                                                    : ((const int32_t *)classes->data)[i];
            int cls = -1;
            if (nmap > 0) {
                if (c < 0 || c >= nmap) {
                    rc = moco_fail(err, "%s: record %lld: detection %lld: class %lld is not in 0..%d (the stream's classes)",
                                   name, record, (long long)i, (long long)c, nmap - 1);
                    goto done;
                }
                if ((cls = map[c]) < 0) {
                    rc = moco_fail(err, "%s: record %lld: detection %lld: class '%s' is not one of the evaluated classes",
                                   name, record, (long long)i, stream_header_class(h, (int)c));
                    goto done;
                }
            } else if (c < 0 || c >= ds->nclasses) {
                rc = moco_fail(err, "%s: record %lld: detection %lld: class %lld is not in 0..%d", name, record,
                               (long long)i, (long long)c, ds->nclasses - 1);
                goto done;
            }
            if (nmap == 0)
                cls = (int)c;
            const float *bb = b + 4 * i;
            double raw[4] = {bb[0], bb[1], bb[2], bb[3]};
            const char *why = bad_detection(s[i], raw);
            if (why) { /* checked in the stream's own coordinates: x2 < x1 */
                why = strcmp(why, "xmax < xmin") == 0 ? "x2 < x1" : strcmp(why, "ymax < ymin") == 0 ? "y2 < y1" : why;
                rc = moco_fail(err, "%s: record %lld: detection %lld: %s", name, record, (long long)i, why);
                goto done;
            }
            /* detectron2's process(): xmin += 1; ymin += 1 on float32 numpy scalars, then the text. */
            float xmin = bb[0] + 1.0f, ymin = bb[1] + 1.0f;
            double box[4] = {xmin, ymin, bb[2], bb[3]};
            double score = s[i];
            if (!exact) {
                score = round_decimals(score, 3);
                for (int k = 0; k < 4; k++)
                    box[k] = round_decimals(box[k], 1);
            }
            if (voc_detections_add(out, image, cls, score, box, err)) {
                rc = MOCO_ERR;
                goto done;
            }
        }
    }
    if (got < 0) /* STREAM_DAMAGED too: a detection lost is a different AP, so never read on */
        rc = MOCO_ERR;
done:
    free(map);
    stream_reader_close(r);
    return rc;
}

int voc_write_stream(const voc_dataset *ds, const voc_detections *d, const char *path,
                     const char *producer, int argc, char **argv, moco_error *err)
{
    stream_header *h = stream_header_new("detections", producer);
    if (!h)
        return moco_fail(err, "out of memory");
    if (argv)
        stream_header_set_args(h, argc, argv);
    stream_header_set_classes(h, ds->nclasses, (const char *const *)ds->classes);
    stream_header_set_str(h, "boxes", "x1 y1 x2 y2 as detectron2 predicts them: devkit xmin-1 ymin-1 xmax ymax");
    stream_header_set_int(h, "detections", (int64_t)d->n);
    stream_options opt = STREAM_OPTIONS_DEFAULT;
    stream_writer *w = stream_writer_open(path, &opt, h, err);
    stream_header_free(h);
    if (!w)
        return MOCO_ERR;
    size_t cap = d->n ? d->n : 1;
    float *boxes = malloc(cap * 4 * sizeof *boxes), *scores = malloc(cap * sizeof *scores);
    int64_t *classes = malloc(cap * sizeof *classes);
    int rc = boxes && scores && classes ? MOCO_OK : moco_fail(err, "out of memory");
    for (size_t i = 0; i < d->n && rc == MOCO_OK;) {
        size_t j = i;
        int image = d->items[i].image;
        for (; j < d->n && d->items[j].image == image; j++) {
            const voc_detection *x = &d->items[j];
            size_t k = j - i;
            boxes[4 * k + 0] = (float)(x->box[0] - 1.0);
            boxes[4 * k + 1] = (float)(x->box[1] - 1.0);
            boxes[4 * k + 2] = (float)x->box[2];
            boxes[4 * k + 3] = (float)x->box[3];
            scores[k] = (float)x->score;
            classes[k] = x->cls;
        }
        stream_record r;
        int64_t n = (int64_t)(j - i), bdims[2] = {n, 4}, idlen = (int64_t)strlen(ds->images[image].id);
        stream_record_init(&r, image, -1);
        if (stream_record_add(&r, "image_id", DTYPE_U8, 1, &idlen, ds->images[image].id, err) ||
            stream_record_add(&r, "boxes", DTYPE_F32, 2, bdims, boxes, err) ||
            stream_record_add(&r, "scores", DTYPE_F32, 1, &n, scores, err) ||
            stream_record_add(&r, "classes", DTYPE_I64, 1, &n, classes, err))
            rc = MOCO_ERR;
        else
            rc = stream_write(w, &r, err);
        i = j;
    }
    free(boxes);
    free(scores);
    free(classes);
    if (rc == MOCO_OK)
        return stream_writer_close(w, err);
    stream_writer_abort(w);
    return rc;
}

/* ================================ the metric ================================ */

/* numpy's pairwise summation (DOUBLE_pairwise_sum in loops_utils.h), which np.sum and np.mean use
 * on a contiguous float64 array, starting from the identity 0: blocks of up to 128 summed with
 * eight accumulators, larger arrays split in halves at a multiple of 8. */
double voc_pairwise_sum(const double *a, size_t n)
{
    if (n < 8) {
        double res = 0.;
        for (size_t i = 0; i < n; i++)
            res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        size_t i;
        for (int k = 0; k < 8; k++)
            r[k] = a[k];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int k = 0; k < 8; k++)
                r[k] += a[i + k];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++)
            res += a[i];
        return res;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return voc_pairwise_sum(a, n2) + voc_pairwise_sum(a + n2, n - n2);
}

double voc_iou(const double bb[4], const double gt[4])
{
    /* voc_eval's overlap, term by term in its order: +1 on every width and height. */
    double ixmin = fmax(gt[0], bb[0]), iymin = fmax(gt[1], bb[1]);
    double ixmax = fmin(gt[2], bb[2]), iymax = fmin(gt[3], bb[3]);
    double iw = fmax(ixmax - ixmin + 1.0, 0.0), ih = fmax(iymax - iymin + 1.0, 0.0);
    double inters = iw * ih;
    double uni = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (gt[2] - gt[0] + 1.0) * (gt[3] - gt[1] + 1.0) - inters;
    return inters / uni;
}

int voc_ap(const double *rec, const double *prec, size_t n, voc_metric metric, double *ap, moco_error *err)
{
    if (metric == VOC_METRIC_11POINT) {
        double sum = 0.0;
        for (int k = 0; k <= 10; k++) {
            /* np.arange(0., 1.1, 0.1) fills start + k * delta: 0.30000000000000004, not 0.3 */
            double t = k * 0.1, p = 0;
            for (size_t i = 0; i < n; i++)
                if (rec[i] >= t && prec[i] > p)
                    p = prec[i];
            sum = sum + p / 11.0;
        }
        *ap = sum;
        return MOCO_OK;
    }
    /* Area under the envelope: sentinels (0, 0) and (1, 0), precision made monotone from the right,
     * then the sum of recall steps times the precision after each step. */
    double *mrec = malloc((n + 2) * sizeof *mrec), *mpre = malloc((n + 2) * sizeof *mpre);
    double *terms = malloc((n + 1) * sizeof *terms);
    if (!mrec || !mpre || !terms) {
        free(mrec);
        free(mpre);
        free(terms);
        return moco_fail(err, "out of memory");
    }
    mrec[0] = 0.0, mpre[0] = 0.0;
    memcpy(mrec + 1, rec, n * sizeof *rec);
    memcpy(mpre + 1, prec, n * sizeof *prec);
    mrec[n + 1] = 1.0, mpre[n + 1] = 0.0;
    for (size_t i = n + 1; i > 0; i--)
        mpre[i - 1] = fmax(mpre[i - 1], mpre[i]);
    size_t nterms = 0;
    for (size_t i = 0; i < n + 1; i++)
        if (mrec[i + 1] != mrec[i])
            terms[nterms++] = (mrec[i + 1] - mrec[i]) * mpre[i + 1];
    *ap = voc_pairwise_sum(terms, nterms);
    free(mrec);
    free(mpre);
    free(terms);
    return MOCO_OK;
}

void voc_result_free(voc_result *res)
{
    free(res->positives);
    free(res->difficult);
    free(res->detections);
    free(res->evaluated);
    free(res->ap);
    memset(res, 0, sizeof *res);
}

typedef struct {
    double score;
    size_t order; /* position in the input: breaks ties, so the sort is stable */
} ranked;

static int by_score_desc(const void *pa, const void *pb)
{
    const ranked *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Scratch for one class: its detections ranked, its boxes per image (gt_start[image] ..
 * gt_start[image + 1] index gt_box/gt_difficult/taken), tp and fp turned into recall/precision. */
typedef struct {
    ranked *dets;
    size_t ndets;
    int *gt_start;
    double (*gt_box)[4];
    int *gt_difficult, *taken;
    double *rec, *prec;
} class_work;

/* AP (fraction) of one class at one threshold: voc_eval's loop over the ranked detections. */
static int eval_class(const voc_detections *d, class_work *w, int64_t npos, double thresh,
                      voc_metric metric, double *ap, moco_error *err)
{
    double tp = 0, fp = 0;
    for (size_t k = 0; k < w->ndets; k++) {
        const voc_detection *x = &d->items[w->dets[k].order];
        int first = w->gt_start[x->image], last = w->gt_start[x->image + 1];
        double ovmax = -INFINITY;
        int jmax = -1;
        for (int g = first; g < last; g++) { /* np.argmax: the first of equal overlaps */
            double ov = voc_iou(x->box, w->gt_box[g]);
            if (ov > ovmax) {
                ovmax = ov;
                jmax = g;
            }
        }
        if (ovmax > thresh) {
            if (!w->gt_difficult[jmax]) {
                if (!w->taken[jmax]) {
                    tp += 1.0;
                    w->taken[jmax] = 1;
                } else {
                    fp += 1.0;
                }
            } /* a difficult box: neither */
        } else {
            fp += 1.0;
        }
        w->rec[k] = tp / (double)npos;
        w->prec[k] = tp / fmax(tp + fp, DBL_EPSILON); /* np.finfo(np.float64).eps */
    }
    return voc_ap(w->rec, w->prec, w->ndets, metric, ap, err);
}

int voc_evaluate(const voc_dataset *ds, const voc_detections *d, const voc_eval_options *opt,
                 voc_result *res, moco_error *err)
{
    memset(res, 0, sizeof *res);
    int nc = ds->nclasses;
    res->nclasses = nc;
    for (int t = 0; t < VOC_NUM_THRESHOLDS; t++)
        res->thresholds[t] = (50 + 5 * t) / 100.0; /* range(50, 100, 5), thresh / 100.0 */
    res->positives = calloc((size_t)nc, sizeof *res->positives);
    res->difficult = calloc((size_t)nc, sizeof *res->difficult);
    res->detections = calloc((size_t)nc, sizeof *res->detections);
    res->evaluated = calloc((size_t)nc, sizeof *res->evaluated);
    res->ap = calloc((size_t)nc * VOC_NUM_THRESHOLDS, sizeof *res->ap);
    /* Detections per class in input order: counts, then a bucket sort of their indices. */
    size_t *det_start = calloc((size_t)nc + 1, sizeof *det_start), *det_index = malloc((d->n ? d->n : 1) * sizeof *det_index);
    size_t *fill = calloc((size_t)nc, sizeof *fill);
    int64_t *gt_count = calloc((size_t)nc, sizeof *gt_count);
    class_work w = {0};
    int rc = MOCO_OK;
    if (!res->positives || !res->difficult || !res->detections || !res->evaluated || !res->ap || !det_start ||
        !det_index || !fill || !gt_count) {
        rc = moco_fail(err, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < d->n; i++) {
        if (d->items[i].cls < 0 || d->items[i].cls >= nc || d->items[i].image < 0 || d->items[i].image >= ds->nimages) {
            rc = moco_fail(err, "detection %zu: class %d or image %d out of range", i, d->items[i].cls, d->items[i].image);
            goto done;
        }
        det_start[d->items[i].cls + 1]++;
    }
    for (int c = 0; c < nc; c++) {
        res->detections[c] = (int64_t)det_start[c + 1];
        det_start[c + 1] += det_start[c];
    }
    for (size_t i = 0; i < d->n; i++) {
        int c = d->items[i].cls;
        det_index[det_start[c] + fill[c]++] = i;
    }
    int64_t max_gt = 0;
    size_t max_dets = 0;
    for (int i = 0; i < ds->nimages; i++)
        for (int k = 0; k < ds->images[i].nobjects; k++) {
            const voc_object *o = &ds->images[i].objects[k];
            gt_count[o->cls]++;
            if (o->difficult)
                res->difficult[o->cls]++;
            else
                res->positives[o->cls]++;
        }
    for (int c = 0; c < nc; c++) {
        max_gt = gt_count[c] > max_gt ? gt_count[c] : max_gt;
        size_t m = det_start[c + 1] - det_start[c];
        max_dets = m > max_dets ? m : max_dets;
    }
    w.dets = malloc((max_dets ? max_dets : 1) * sizeof *w.dets);
    w.rec = malloc((max_dets ? max_dets : 1) * sizeof *w.rec);
    w.prec = malloc((max_dets ? max_dets : 1) * sizeof *w.prec);
    w.gt_start = malloc(((size_t)ds->nimages + 1) * sizeof *w.gt_start);
    w.gt_box = malloc((size_t)(max_gt ? max_gt : 1) * sizeof *w.gt_box);
    w.gt_difficult = malloc((size_t)(max_gt ? max_gt : 1) * sizeof *w.gt_difficult);
    w.taken = malloc((size_t)(max_gt ? max_gt : 1) * sizeof *w.taken);
    if (!w.dets || !w.rec || !w.prec || !w.gt_start || !w.gt_box || !w.gt_difficult || !w.taken) {
        rc = moco_fail(err, "out of memory");
        goto done;
    }
    for (int c = 0; c < nc; c++) {
        if (res->positives[c] == 0) {
            if (!opt || !opt->skip_empty) {
                rc = moco_fail(err, "class '%s' has no positive (non-difficult) objects in the set; AP is undefined "
                               "(--skip-empty leaves such classes out)", ds->classes[c]);
                goto done;
            }
            continue;
        }
        /* This class's boxes, image by image, in annotation order (np.argmax's tie order). */
        int g = 0;
        for (int i = 0; i < ds->nimages; i++) {
            w.gt_start[i] = g;
            for (int k = 0; k < ds->images[i].nobjects; k++) {
                const voc_object *o = &ds->images[i].objects[k];
                if (o->cls != c)
                    continue;
                memcpy(w.gt_box[g], o->box, sizeof w.gt_box[g]);
                w.gt_difficult[g] = o->difficult;
                g++;
            }
        }
        w.gt_start[ds->nimages] = g;
        /* np.argsort(-confidence), made stable so equal scores keep their input order. */
        w.ndets = det_start[c + 1] - det_start[c];
        for (size_t k = 0; k < w.ndets; k++) {
            size_t i = det_index[det_start[c] + k];
            w.dets[k] = (ranked){.score = d->items[i].score, .order = i};
        }
        qsort(w.dets, w.ndets, sizeof *w.dets, by_score_desc);
        for (int t = 0; t < VOC_NUM_THRESHOLDS; t++) {
            memset(w.taken, 0, (size_t)g * sizeof *w.taken);
            double ap;
            if (eval_class(d, &w, res->positives[c], res->thresholds[t], opt ? opt->metric : VOC_METRIC_11POINT, &ap, err)) {
                rc = MOCO_ERR;
                goto done;
            }
            res->ap[(size_t)c * VOC_NUM_THRESHOLDS + t] = ap * 100;
        }
        res->evaluated[c] = 1;
        res->nevaluated++;
    }
    if (res->nevaluated == 0) {
        rc = moco_fail(err, "no class has positive objects in the set: nothing to evaluate");
        goto done;
    }
    /* detectron2: mAP[t] = np.mean(aps[t]) over classes, AP = np.mean over thresholds. */
    double *column = malloc((size_t)res->nevaluated * sizeof *column);
    if (!column) {
        rc = moco_fail(err, "out of memory");
        goto done;
    }
    for (int t = 0; t < VOC_NUM_THRESHOLDS; t++) {
        int k = 0;
        for (int c = 0; c < nc; c++)
            if (res->evaluated[c])
                column[k++] = res->ap[(size_t)c * VOC_NUM_THRESHOLDS + t];
        res->map[t] = voc_pairwise_sum(column, (size_t)k) / k;
    }
    free(column);
    res->AP = voc_pairwise_sum(res->map, VOC_NUM_THRESHOLDS) / VOC_NUM_THRESHOLDS;
    res->AP50 = res->map[0];
    res->AP75 = res->map[5];
done:
    free(det_start);
    free(det_index);
    free(fill);
    free(gt_count);
    free(w.dets);
    free(w.rec);
    free(w.prec);
    free(w.gt_start);
    free(w.gt_box);
    free(w.gt_difficult);
    free(w.taken);
    if (rc)
        voc_result_free(res);
    return rc;
}
