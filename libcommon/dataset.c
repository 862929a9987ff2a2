/* dataset.c — see dataset.h. */
#include "dataset.h"

#include <archive.h>
#include <archive_entry.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* torchvision's IMG_EXTENSIONS: files with these are samples; formats other than JPEG and PNG are
 * then reported as undecodable rather than silently left out. */
static const char *const image_extensions[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"};

static int has_extension(const char *name, const char *ext)
{
    size_t n = strlen(name), e = strlen(ext);
    return n > e && strcasecmp(name + n - e, ext) == 0;
}

static int has_extension_n(const char *name, size_t n, const char *ext)
{
    size_t e = strlen(ext);
    return n > e && strncasecmp(name + n - e, ext, e) == 0;
}

static int is_image_name(const char *name)
{
    for (size_t i = 0; i < sizeof image_extensions / sizeof *image_extensions; i++)
        if (has_extension(name, image_extensions[i]))
            return 1;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void dataset_init(dataset *d) { memset(d, 0, sizeof *d); }

void dataset_free(dataset *d)
{
    for (int i = 0; i < d->ninputs; i++) {
        free(d->inputs[i].path);
        idx_free(&d->inputs[i].images);
    }
    for (int64_t i = 0; i < d->count; i++)
        free(d->items[i].key);
    for (int i = 0; i < d->nclasses; i++)
        free(d->classes[i]);
    for (int i = 0; i < d->nfound; i++)
        free(d->found[i]);
    free(d->inputs);
    free(d->items);
    free(d->classes);
    free(d->found);
    memset(d, 0, sizeof *d);
}

/* Index of a class name in the discovery table, adding it when new. Consecutive samples usually
 * share a class, so the last answer is tried first. */
static int found_class(dataset *d, const char *name)
{
    if (d->last_found < d->nfound && strcmp(d->found[d->last_found], name) == 0)
        return d->last_found;
    for (int i = 0; i < d->nfound; i++)
        if (strcmp(d->found[i], name) == 0)
            return d->last_found = i;
    if (d->nfound == d->found_cap) {
        int cap = d->found_cap ? 2 * d->found_cap : 64;
        char **p = realloc(d->found, (size_t)cap * sizeof *p);
        if (!p)
            return -1;
        d->found = p;
        d->found_cap = cap;
    }
    if (!(d->found[d->nfound] = strdup(name)))
        return -1;
    return d->last_found = d->nfound++;
}

/* Append an item; key is copied. label >= 0 is a numeric label, class_name a named one. */
static int add_item(dataset *d, int input, int64_t member, const char *key, int64_t label, const char *class_name,
                    moco_error *err)
{
    if (d->count == d->cap) {
        int64_t cap = d->cap ? 2 * d->cap : 1024;
        dataset_item *p = realloc(d->items, (size_t)cap * sizeof *p);
        if (!p)
            return moco_fail(err, "out of memory listing %lld samples", (long long)cap);
        d->items = p;
        d->cap = cap;
    }
    dataset_item *it = &d->items[d->count];
    it->input = input;
    it->member = member;
    it->label = label;
    it->class_tmp = class_name ? found_class(d, class_name) : -1;
    it->key = strdup(key);
    if (!it->key || (class_name && it->class_tmp < 0))
        return moco_fail(err, "out of memory");
    d->has_numeric |= label >= 0;
    d->has_named |= class_name != NULL;
    d->count++;
    return MOCO_OK;
}

static int new_input(dataset *d, input_kind kind, const char *path, moco_error *err)
{
    dataset_input *p = realloc(d->inputs, (size_t)(d->ninputs + 1) * sizeof *p);
    if (!p)
        return moco_fail(err, "out of memory");
    d->inputs = p;
    dataset_input *in = &d->inputs[d->ninputs];
    memset(in, 0, sizeof *in);
    in->kind = kind;
    in->path = strdup(path);
    in->first_item = d->count;
    return in->path ? d->ninputs++ : moco_fail(err, "out of memory");
}

/* ------------------------------------------------------------------ text files */

static int read_lines(const char *path, char ***lines, int64_t *n, moco_error *err)
{
    uint8_t *buf;
    size_t len;
    if (dataset_read_file(path, &buf, &len, (int64_t)1 << 32, err))
        return MOCO_ERR;
    int64_t cap = 0, count = 0;
    char **out = NULL;
    char *s = (char *)buf, *end = s + len;
    while (s < end) {
        char *nl = memchr(s, '\n', (size_t)(end - s));
        char *e = nl ? nl : end;
        size_t l = (size_t)(e - s);
        if (l && s[l - 1] == '\r')
            l--;
        if (l > 0) {
            if (count == cap) {
                cap = cap ? 2 * cap : 256;
                char **p = realloc(out, (size_t)cap * sizeof *p);
                if (!p)
                    break;
                out = p;
            }
            out[count] = strndup(s, l);
            if (!out[count])
                break;
            count++;
        }
        s = e + 1;
    }
    free(buf);
    *lines = out;
    *n = count;
    return MOCO_OK;
}

static void free_lines(char **lines, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
}

static int parse_label(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT32_MAX)
        return 0;
    *out = v;
    return 1;
}

int dataset_set_classes_file(dataset *d, const char *path, moco_error *err)
{
    char **lines;
    int64_t n;
    if (read_lines(path, &lines, &n, err))
        return MOCO_ERR;
    if (n == 0 || n > INT32_MAX) {
        free_lines(lines, n);
        return moco_fail(err, "%s: no class names (one per line expected)", path);
    }
    d->classes = lines;
    d->nclasses = (int)n;
    d->fixed_classes = 1;
    return MOCO_OK;
}

int dataset_read_file(const char *path, uint8_t **buf, size_t *len, int64_t max_bytes, moco_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return moco_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size > max_bytes) {
        close(fd);
        return moco_fail(err, "%s: %s", path, errno ? strerror(errno) : "file larger than the limit");
    }
    size_t cap = (size_t)st.st_size + 1, got = 0;
    uint8_t *p = malloc(cap);
    while (p) {
        ssize_t n = read(fd, p + got, cap - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0) {
                free(p);
                close(fd);
                return moco_fail(err, "%s: read failed: %s", path, strerror(errno));
            }
            break;
        }
        got += (size_t)n;
        if (got == cap) { /* the file grew since fstat */
            if ((int64_t)cap > max_bytes) {
                free(p);
                close(fd);
                return moco_fail(err, "%s: file larger than the limit", path);
            }
            uint8_t *q = realloc(p, cap * 2);
            if (!q)
                free(p);
            p = q;
            cap *= 2;
        }
    }
    close(fd);
    if (!p)
        return moco_fail(err, "%s: out of memory", path);
    *buf = p;
    *len = got;
    return MOCO_OK;
}

/* ------------------------------------------------------------------ folders */

typedef struct {
    char **v;
    int64_t n, cap;
} strlist;

static int strlist_add(strlist *l, char *s)
{
    if (!s)
        return -1;
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 64;
        char **p = realloc(l->v, (size_t)cap * sizeof *p);
        if (!p) {
            free(s);
            return -1;
        }
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n++] = s;
    return 0;
}

static void strlist_free(strlist *l)
{
    for (int64_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static char *join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s/%s", a, b);
    return s;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode); /* follows symlinks, as os.walk(followlinks=True) */
}

/* Sorted entry names of a folder: sub-folders into dirs, files into files (either may be NULL). */
static int list_folder(const char *path, strlist *dirs, strlist *files, moco_error *err)
{
    DIR *dp = opendir(path);
    if (!dp)
        return moco_fail(err, "%s: cannot open folder: %s", path, strerror(errno));
    struct dirent *e;
    int rc = MOCO_OK;
    while ((e = readdir(dp)) && !rc) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *full = join(path, e->d_name);
        if (!full) {
            rc = moco_fail(err, "out of memory");
            break;
        }
        strlist *to = is_dir(full) ? dirs : files;
        free(full);
        if (to && strlist_add(to, strdup(e->d_name)))
            rc = moco_fail(err, "out of memory");
    }
    closedir(dp);
    if (dirs && dirs->n)
        qsort(dirs->v, (size_t)dirs->n, sizeof *dirs->v, cmp_str);
    if (files && files->n)
        qsort(files->v, (size_t)files->n, sizeof *files->v, cmp_str);
    return rc;
}

/* Every folder under root (root included), as torchvision walks a class folder. */
static int collect_folders(const char *root, strlist *out, int depth, moco_error *err)
{
    if (depth > 64)
        return moco_fail(err, "%s: folders nested more than 64 deep (a symlink loop?)", root);
    if (strlist_add(out, strdup(root)))
        return moco_fail(err, "out of memory");
    strlist dirs = {0};
    int rc = list_folder(root, &dirs, NULL, err);
    for (int64_t i = 0; i < dirs.n && !rc; i++) {
        char *sub = join(root, dirs.v[i]);
        rc = sub ? collect_folders(sub, out, depth + 1, err) : moco_fail(err, "out of memory");
        free(sub);
    }
    strlist_free(&dirs);
    return rc;
}

/* Image files of one class folder in torchvision's order: sorted(os.walk(...)) sorts the walked
 * folders by path, and each folder's files by name. */
static int add_class_folder(dataset *d, int input, const char *folder, const char *class_name, moco_error *err)
{
    strlist folders = {0};
    int rc = collect_folders(folder, &folders, 0, err);
    if (folders.n)
        qsort(folders.v, (size_t)folders.n, sizeof *folders.v, cmp_str);
    for (int64_t f = 0; f < folders.n && !rc; f++) {
        strlist files = {0};
        rc = list_folder(folders.v[f], NULL, &files, err);
        for (int64_t i = 0; i < files.n && !rc; i++) {
            if (!is_image_name(files.v[i])) {
                d->ignored++;
                continue;
            }
            char *path = join(folders.v[f], files.v[i]);
            rc = path ? add_item(d, input, -1, path, -1, class_name, err) : moco_fail(err, "out of memory");
            free(path);
        }
        strlist_free(&files);
    }
    strlist_free(&folders);
    return rc;
}

/* Labels for a flat folder or an IDX file: either "name label" lines or one label per line. */
typedef struct {
    char **names, **labels;
    int64_t n;
    int by_name;
} label_file;

static int load_label_file(const char *path, label_file *lf, moco_error *err)
{
    char **lines;
    int64_t n;
    memset(lf, 0, sizeof *lf);
    if (read_lines(path, &lines, &n, err))
        return MOCO_ERR;
    lf->names = calloc((size_t)n + 1, sizeof *lf->names);
    lf->labels = calloc((size_t)n + 1, sizeof *lf->labels);
    if (!lf->names || !lf->labels) {
        free_lines(lines, n);
        return moco_fail(err, "out of memory");
    }
    for (int64_t i = 0; i < n; i++) {
        char *s = lines[i], *sep = strpbrk(s, " \t,");
        if (i == 0)
            lf->by_name = sep != NULL;
        if ((sep != NULL) != lf->by_name) {
            free_lines(lines, n);
            return moco_fail(err, "%s: line %lld: mixes \"name label\" and bare-label lines", path, (long long)i + 1);
        }
        if (sep) {
            *sep = '\0';
            char *lab = sep + 1;
            while (*lab == ' ' || *lab == '\t' || *lab == ',')
                lab++;
            lf->names[i] = strdup(s);
            lf->labels[i] = strdup(lab);
        } else {
            lf->labels[i] = strdup(s);
        }
    }
    lf->n = n;
    free_lines(lines, n);
    return MOCO_OK;
}

static void free_label_file(label_file *lf)
{
    for (int64_t i = 0; i < lf->n; i++) {
        free(lf->names[i]);
        free(lf->labels[i]);
    }
    free(lf->names);
    free(lf->labels);
}

/* Add one sample with a label written as text: a number, or a class name. */
static int add_labelled(dataset *d, int input, int64_t member, const char *key, const char *label, moco_error *err)
{
    int64_t num;
    if (!label || !*label)
        return add_item(d, input, member, key, -1, NULL, err);
    if (parse_label(label, &num))
        return add_item(d, input, member, key, num, NULL, err);
    return add_item(d, input, member, key, -1, label, err);
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int add_flat_folder(dataset *d, int input, const char *path, const char *labels_file, moco_error *err)
{
    strlist files = {0};
    int rc = list_folder(path, NULL, &files, err);
    label_file lf = {0};
    if (!rc && labels_file)
        rc = load_label_file(labels_file, &lf, err);
    int64_t n_images = 0;
    for (int64_t i = 0; i < files.n; i++)
        n_images += is_image_name(files.v[i]);
    if (!rc && labels_file && !lf.by_name && lf.n != n_images)
        rc = moco_fail(err, "%s: %lld labels for %lld images in %s", labels_file, (long long)lf.n,
                       (long long)n_images, path);
    int64_t k = 0;
    for (int64_t i = 0; i < files.n && !rc; i++) {
        if (!is_image_name(files.v[i])) {
            d->ignored++;
            continue;
        }
        const char *label = NULL;
        if (labels_file && !lf.by_name)
            label = lf.labels[k];
        for (int64_t j = 0; labels_file && lf.by_name && j < lf.n && !label; j++)
            if (!strcmp(base_name(lf.names[j]), files.v[i]))
                label = lf.labels[j];
        if (labels_file && !label) {
            rc = moco_fail(err, "%s: no label for %s", labels_file, files.v[i]);
            break;
        }
        char *full = join(path, files.v[i]);
        rc = full ? add_labelled(d, input, -1, full, label, err) : moco_fail(err, "out of memory");
        free(full);
        k++;
    }
    free_label_file(&lf);
    strlist_free(&files);
    return rc;
}

static int add_folder(dataset *d, const char *path, const char *labels_file, moco_error *err)
{
    int input = new_input(d, INPUT_FILES, path, err);
    if (input < 0)
        return MOCO_ERR;
    strlist dirs = {0};
    int rc = list_folder(path, &dirs, NULL, err);
    if (!rc && dirs.n == 0) {
        rc = add_flat_folder(d, input, path, labels_file, err);
    } else if (!rc && labels_file) {
        rc = moco_fail(err, "%s: a label file is for a flat folder, but this one has class sub-folders", path);
    } else {
        for (int64_t i = 0; i < dirs.n && !rc; i++) {
            char *sub = join(path, dirs.v[i]);
            rc = sub ? add_class_folder(d, input, sub, dirs.v[i], err) : moco_fail(err, "out of memory");
            free(sub);
        }
    }
    strlist_free(&dirs);
    d->inputs[input].items = d->count - d->inputs[input].first_item;
    return rc;
}

/* ------------------------------------------------------------------ file lists and IDX */

static int add_list(dataset *d, const char *path, moco_error *err)
{
    int input = new_input(d, INPUT_FILES, path, err);
    if (input < 0)
        return MOCO_ERR;
    char **lines;
    int64_t n;
    if (read_lines(path, &lines, &n, err))
        return MOCO_ERR;
    char *dir = strdup(path);
    char *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash)
        *slash = '\0';
    int rc = dir ? MOCO_OK : moco_fail(err, "out of memory");
    for (int64_t i = 0; i < n && !rc; i++) {
        char *tab = strchr(lines[i], '\t');
        if (tab)
            *tab = '\0';
        const char *file = lines[i];
        char *full = file[0] == '/' || !slash ? strdup(file) : join(dir, file);
        rc = full ? add_labelled(d, input, -1, full, tab ? tab + 1 : NULL, err) : moco_fail(err, "out of memory");
        free(full);
    }
    free(dir);
    free_lines(lines, n);
    d->inputs[input].items = d->count - d->inputs[input].first_item;
    return rc;
}

/* MNIST naming: "train-images-idx3-ubyte.gz" has its labels in "train-labels-idx1-ubyte.gz". */
static char *companion_labels(const char *path)
{
    const char *at = strstr(path, "images-idx3");
    if (!at)
        return NULL;
    char *s = strdup(path);
    if (s)
        memcpy(s + (at - path), "labels-idx1", 11);
    return s;
}

static int add_idx(dataset *d, const char *path, const char *labels_file, moco_error *err)
{
    int input = new_input(d, INPUT_IDX, path, err);
    if (input < 0)
        return MOCO_ERR;
    dataset_input *in = &d->inputs[input];
    if (idx_load(path, &in->images, err))
        return MOCO_ERR;
    if (in->images.rank == 1) /* a labels file given as an input */
        return moco_fail(err, "%s: an IDX file of rank 1 (labels?): give the images file; its labels are read "
                         "from the *-labels-idx1-* file beside it, or from --labels FILE", path);
    if (in->images.rank != 3 && !(in->images.rank == 4 && (in->images.dims[3] == 1 || in->images.dims[3] == 3)))
        return moco_fail(err, "%s: IDX images must be (N,H,W) or (N,H,W,C) with C 1 or 3, not rank %d", path,
                         in->images.rank);
    char *companion = labels_file ? NULL : companion_labels(path);
    const char *lpath = labels_file ? labels_file : companion;
    idx_array labels = {0};
    int rc = MOCO_OK;
    if (lpath && (labels_file || access(lpath, R_OK) == 0)) {
        rc = idx_load(lpath, &labels, err);
        if (!rc && (labels.rank != 1 || labels.count != in->images.count))
            rc = moco_fail(err, "%s: %lld labels of rank %d for %lld images in %s", lpath, (long long)labels.count,
                           labels.rank, (long long)in->images.count, path);
    }
    for (int64_t i = 0; i < in->images.count && !rc; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s[%lld]", base_name(path), (long long)i);
        rc = add_item(d, input, i, key, labels.data ? labels.data[i] : -1, NULL, err);
    }
    idx_free(&labels);
    free(companion);
    d->inputs[input].items = d->count - d->inputs[input].first_item;
    return rc;
}

/* ------------------------------------------------------------------ archives */

typedef struct {
    int listing; /* list names (and read .cls labels) only, or stream the wanted members' bytes */
    archive_want_fn want;
    archive_visit_fn visit;
    void *ctx;
    int64_t next_member, max_bytes;
    uint8_t *buf;
    size_t cap;
    uint8_t relay[1 << 16]; /* bytes of a nested archive read from the outer one */
    /* listing: WebDataset .cls labels by key */
    strlist cls_keys, cls_values;
    moco_error *err;
} walker;

static struct archive *new_reader(void)
{
    struct archive *a = archive_read_new();
    if (a) {
        archive_read_support_filter_all(a);
        archive_read_support_format_tar(a);
        archive_read_support_format_zip(a);
        archive_read_support_format_cpio(a);
        archive_read_support_format_7zip(a);
    }
    return a;
}

/* A member's bytes into w->buf, bounded by max_bytes. */
static int read_member(walker *w, struct archive *a, const char *name, size_t *len, moco_error *err)
{
    size_t got = 0;
    for (;;) {
        if (got == w->cap) {
            size_t cap = w->cap ? 2 * w->cap : (1 << 20);
            uint8_t *p = realloc(w->buf, cap);
            if (!p)
                return moco_fail(err, "%s: out of memory", name);
            w->buf = p;
            w->cap = cap;
        }
        la_ssize_t n = archive_read_data(a, w->buf + got, w->cap - got);
        if (n < 0)
            return moco_fail(err, "%s: %s", name, archive_error_string(a));
        if (n == 0)
            break;
        got += (size_t)n;
        if ((int64_t)got > w->max_bytes)
            return moco_fail(err, "%s: member larger than the limit of %lld bytes", name, (long long)w->max_bytes);
    }
    *len = got;
    return MOCO_OK;
}

static la_ssize_t relay_read(struct archive *inner, void *ctx, const void **buf)
{
    (void)inner;
    void **pair = ctx;
    walker *w = pair[0];
    struct archive *outer = pair[1];
    *buf = w->relay;
    return archive_read_data(outer, w->relay, sizeof w->relay);
}

static int walk(walker *w, struct archive *a, const char *prefix, int depth, moco_error *err)
{
    struct archive_entry *e;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
        if (archive_entry_filetype(e) != AE_IFREG)
            continue;
        const char *member = archive_entry_pathname(e);
        if (!member)
            continue;
        char *name = prefix ? join(prefix, member) : strdup(member);
        if (!name)
            return moco_fail(err, "out of memory");
        int rc = MOCO_OK;
        if (depth == 0 && has_extension(member, ".tar")) {
            /* ImageNet's training tar: one tar per class, streamed through without extracting */
            struct archive *inner = new_reader();
            void *pair[2] = {w, a};
            if (!inner || archive_read_open(inner, pair, NULL, relay_read, NULL) != ARCHIVE_OK)
                rc = moco_fail(err, "%s: cannot read nested archive: %s", name,
                               inner ? archive_error_string(inner) : "out of memory");
            else
                rc = walk(w, inner, name, depth + 1, err);
            archive_read_free(inner);
        } else if (has_extension(member, ".cls") && w->listing) {
            size_t len;
            rc = read_member(w, a, name, &len, err);
            if (!rc) {
                char *dot = strrchr(name, '.'); /* key = name without ".cls" */
                *dot = '\0';
                char *v = strndup((const char *)w->buf, len < 32 ? len : 32);
                char *end = v ? strpbrk(v, "\r\n ") : NULL;
                if (end)
                    *end = '\0';
                if (strlist_add(&w->cls_keys, strdup(name)) || strlist_add(&w->cls_values, v))
                    rc = moco_fail(err, "out of memory");
            }
        } else if (is_image_name(member)) {
            int64_t m = w->next_member++;
            if (w->listing) {
                rc = w->visit(w->ctx, m, name, NULL, 0, err); /* bytes skipped (seeking when it can) */
            } else if (w->want(w->ctx, m)) {
                size_t len;
                rc = read_member(w, a, name, &len, err);
                if (!rc)
                    rc = w->visit(w->ctx, m, name, w->buf, len, err);
            }
        }
        free(name);
        if (rc)
            return rc;
    }
    if (r != ARCHIVE_EOF)
        return moco_fail(err, "%s%s%s", prefix ? prefix : "", prefix ? ": " : "", archive_error_string(a));
    return MOCO_OK;
}

static int walk_path(walker *w, const char *path, moco_error *err)
{
    struct archive *a = new_reader();
    if (!a)
        return moco_fail(err, "%s: out of memory", path);
    int rc;
    if (archive_read_open_filename(a, path, 1 << 20) != ARCHIVE_OK)
        rc = moco_fail(err, "%s: %s", path, archive_error_string(a));
    else if ((rc = walk(w, a, NULL, 0, err)) < 0 && strncmp(err->msg, path, strlen(path)) != 0)
        moco_prefix(err, "%s", path);
    archive_read_free(a);
    free(w->buf);
    w->buf = NULL;
    w->cap = 0;
    return rc;
}

int dataset_walk_archive(const char *path, archive_want_fn want, archive_visit_fn visit, void *ctx,
                         int64_t max_member_bytes, moco_error *err)
{
    walker *w = calloc(1, sizeof *w);
    if (!w)
        return moco_fail(err, "out of memory");
    w->want = want;
    w->visit = visit;
    w->ctx = ctx;
    w->max_bytes = max_member_bytes;
    int rc = walk_path(w, path, err);
    strlist_free(&w->cls_keys);
    strlist_free(&w->cls_values);
    free(w);
    return rc;
}

/* Listing: remember each image member's name; the class comes from WebDataset's .cls, the nested
 * tar's name, or the parent folder. */
typedef struct {
    strlist names;
} listing;

static int list_visit(void *ctx, int64_t member, const char *key, const uint8_t *data, size_t len, moco_error *err)
{
    (void)member, (void)data, (void)len;
    listing *l = ctx;
    return strlist_add(&l->names, strdup(key)) ? moco_fail(err, "out of memory") : MOCO_OK;
}

/* WebDataset key: the path up to the first dot of the file name. */
static size_t wds_key_length(const char *name)
{
    const char *base = base_name(name);
    const char *dot = strchr(base, '.');
    return dot ? (size_t)(dot - name) : strlen(name);
}

/* Folders every member path starts with ("train/" in train/cat/1.jpg): the class is the folder
 * after them, as ImageFolder takes the folder under its root. Nested tars are left out. */
static int class_depth(const strlist *names)
{
    int depth = -1;
    const char *first = NULL;
    for (int64_t i = 0; i < names->n; i++) {
        const char *s = names->v[i];
        const char *slash = strchr(s, '/');
        if (slash && has_extension_n(s, (size_t)(slash - s), ".tar"))
            continue; /* nested: the inner tar names the class */
        int dirs = 0;
        for (const char *p = s; (p = strchr(p, '/')); p++)
            dirs++;
        if (!first) {
            first = s;
            depth = dirs > 0 ? dirs - 1 : 0;
        }
        /* shared leading folders with the first path, leaving one folder for the class */
        int k = 0;
        const char *a = first, *b = s;
        while (k < depth) {
            const char *ea = strchr(a, '/'), *eb = strchr(b, '/');
            if (!ea || !eb || ea - a != eb - b || strncmp(a, b, (size_t)(ea - a)) != 0)
                break;
            a = ea + 1, b = eb + 1, k++;
        }
        if (k < depth)
            depth = k;
        if (dirs - 1 < depth)
            depth = dirs > 0 ? dirs - 1 : 0;
    }
    return depth < 0 ? 0 : depth;
}

/* The class of an archive member: the inner tar's name for ImageNet's tar of tars, else the folder
 * at `depth`; NULL (unlabelled) for a member with no folder there. */
static char *archive_class(const char *name, int depth)
{
    const char *slash = strchr(name, '/');
    if (slash && has_extension_n(name, (size_t)(slash - name), ".tar"))
        return strndup(name, (size_t)(slash - name) - 4);
    const char *p = name;
    for (int k = 0; k < depth && p; k++) {
        p = strchr(p, '/');
        p = p ? p + 1 : NULL;
    }
    const char *end = p ? strchr(p, '/') : NULL;
    return end ? strndup(p, (size_t)(end - p)) : NULL;
}

static int add_archive(dataset *d, const char *path, moco_error *err)
{
    int input = new_input(d, INPUT_ARCHIVE, path, err);
    if (input < 0)
        return MOCO_ERR;
    walker *w = calloc(1, sizeof *w);
    listing l = {0};
    if (!w)
        return moco_fail(err, "out of memory");
    w->listing = 1;
    w->visit = list_visit;
    w->ctx = &l;
    w->max_bytes = 1 << 20; /* for .cls members */
    int rc = walk_path(w, path, err);
    int depth = class_depth(&l.names);
    for (int64_t i = 0; i < l.names.n && !rc; i++) {
        const char *name = l.names.v[i];
        const char *label = NULL;
        size_t klen = wds_key_length(name);
        for (int64_t j = 0; j < w->cls_keys.n && !label; j++) {
            /* groups are consecutive in a WebDataset tar: look near the same position first */
            int64_t k = (i + j) % w->cls_keys.n;
            if (strlen(w->cls_keys.v[k]) == klen && !strncmp(w->cls_keys.v[k], name, klen))
                label = w->cls_values.v[k];
        }
        if (label) {
            rc = add_labelled(d, input, i, name, label, err);
        } else if (w->cls_keys.n) {
            rc = moco_fail(err, "%s: %s has no .cls label (WebDataset)", path, name);
        } else {
            char *cls = archive_class(name, depth);
            rc = add_item(d, input, i, name, -1, cls, err);
            free(cls);
        }
    }
    strlist_free(&l.names);
    strlist_free(&w->cls_keys);
    strlist_free(&w->cls_values);
    free(w);
    d->inputs[input].items = d->count - d->inputs[input].first_item;
    return rc;
}

/* ------------------------------------------------------------------ detection */

int dataset_add(dataset *d, const char *path, const char *labels_file, moco_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return moco_fail(err, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return add_folder(d, path, labels_file, err);
    uint8_t head[512];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, head, sizeof head) : -1;
    if (fd >= 0)
        close(fd);
    if (n < 0)
        return moco_fail(err, "%s: cannot read: %s", path, strerror(errno));
    if (n >= 4 && head[0] == 0 && head[1] == 0 && head[2] == 0x08)
        return add_idx(d, path, labels_file, err);
    if (n >= 2 && head[0] == 0x1f && head[1] == 0x8b) { /* gzip: an IDX file inside, or a tar.gz */
        gzFile z = gzopen(path, "rb");
        uint8_t magic[4];
        int is_idx = z && gzread(z, magic, 4) == 4 && idx_sniff(magic, 4);
        if (z)
            gzclose(z);
        if (is_idx)
            return add_idx(d, path, labels_file, err);
    }
    struct archive *a = new_reader();
    struct archive_entry *e;
    int is_archive = a && archive_read_open_filename(a, path, 1 << 16) == ARCHIVE_OK &&
                     archive_read_next_header(a, &e) == ARCHIVE_OK;
    archive_read_free(a);
    if (is_archive) {
        if (labels_file)
            return moco_fail(err, "%s: a label file is for a flat folder or IDX file, not an archive", path);
        return add_archive(d, path, err);
    }
    if (memchr(head, 0, (size_t)n))
        return moco_fail(err, "%s: not a folder, archive, IDX file or file list", path);
    if (labels_file)
        return moco_fail(err, "%s: a file list carries its own labels; --labels is for flat folders and IDX", path);
    return add_list(d, path, err);
}

/* ------------------------------------------------------------------ labels */

int dataset_finish(dataset *d, moco_error *err)
{
    if (d->has_named && d->has_numeric && !d->fixed_classes)
        return moco_fail(err, "the inputs mix class names and numeric labels: give --classes FILE to map them");
    if (!d->fixed_classes && d->has_named) {
        /* torchvision: class index = position of the name in sorted order */
        d->classes = malloc((size_t)d->nfound * sizeof *d->classes);
        if (!d->classes)
            return moco_fail(err, "out of memory");
        for (int i = 0; i < d->nfound; i++)
            d->classes[i] = strdup(d->found[i]);
        if (d->nfound)
            qsort(d->classes, (size_t)d->nfound, sizeof *d->classes, cmp_str);
        d->nclasses = d->nfound;
    }
    if (!d->fixed_classes && d->has_numeric) {
        int64_t max = -1;
        for (int64_t i = 0; i < d->count; i++)
            if (d->items[i].label > max)
                max = d->items[i].label;
        d->nclasses = (int)(max + 1);
        d->classes = calloc((size_t)d->nclasses + 1, sizeof *d->classes);
        if (!d->classes)
            return moco_fail(err, "out of memory");
        for (int i = 0; i < d->nclasses; i++) {
            char num[16];
            snprintf(num, sizeof num, "%d", i);
            d->classes[i] = strdup(num);
        }
    }
    /* found -> final index */
    int *map = calloc((size_t)d->nfound + 1, sizeof *map);
    if (!map)
        return moco_fail(err, "out of memory");
    for (int i = 0; i < d->nfound; i++) {
        map[i] = -1;
        for (int k = 0; k < d->nclasses && map[i] < 0; k++)
            if (!strcmp(d->classes[k], d->found[i]))
                map[i] = k;
        if (map[i] < 0) {
            free(map);
            return moco_fail(err, "class '%s' is not in the classes file", d->found[i]);
        }
    }
    for (int64_t i = 0; i < d->count; i++) {
        dataset_item *it = &d->items[i];
        if (it->class_tmp >= 0)
            it->label = map[it->class_tmp];
        else if (it->label >= d->nclasses && d->fixed_classes) {
            free(map);
            return moco_fail(err, "%s: label %lld but the classes file has %d classes", it->key,
                             (long long)it->label, d->nclasses);
        }
    }
    free(map);
    return MOCO_OK;
}
