/* test_voc.c — the VOC metric on hand-built cases with known answers, annotation and detection
 * parsing, and every kind of bad input. Boxes are devkit boxes: 1-based, inclusive, +1 widths. */
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "stream.h"
#include "test.h"
#include "voc.h"

static char tmpdir[] = "/tmp/moco-test-voc-XXXXXX";

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", tmpdir, name);
    return buf[i];
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* Classes "a" and "b"; `images` images named "img0", "img1", ... */
static int make_dataset(voc_dataset *ds, int images)
{
    const char *classes[] = {"a", "b"};
    moco_error err;
    if (voc_dataset_init(ds, 2, classes, &err))
        return -1;
    for (int i = 0; i < images; i++) {
        char id[16];
        snprintf(id, sizeof id, "img%d", i);
        if (voc_dataset_add_image(ds, id, &err) != i)
            return -1;
    }
    return 0;
}

static int add_gt(voc_dataset *ds, int image, int cls, int difficult, double x1, double y1, double x2, double y2)
{
    double box[4] = {x1, y1, x2, y2};
    moco_error err;
    return voc_dataset_add_object(ds, image, cls, difficult, box, &err);
}

static int add_det(voc_detections *d, int image, int cls, double score, double x1, double y1, double x2, double y2)
{
    double box[4] = {x1, y1, x2, y2};
    moco_error err;
    return voc_detections_add(d, image, cls, score, box, &err);
}

static double ap_at(const voc_result *r, int cls, int t) { return r->ap[cls * VOC_NUM_THRESHOLDS + t]; }

static int near(double a, double b) { return fabs(a - b) < 1e-9; }

/* Sum k times p/11 in order, as the 11-point loop does. */
static double eleven(int points_at_1, double p_rest, int points_rest)
{
    double s = 0;
    for (int k = 0; k < points_at_1; k++)
        s = s + 1.0 / 11.0;
    for (int k = 0; k < points_rest; k++)
        s = s + p_rest / 11.0;
    return s * 100;
}

TEST(test_voc_iou_counts_pixels_inclusively)
{
    double g[4] = {1, 1, 10, 10}, half[4] = {1, 1, 10, 5}, beside[4] = {11, 1, 20, 10}, corner[4] = {10, 10, 19, 19};
    CHECK(voc_iou(g, g) == 1.0);
    CHECK(voc_iou(half, g) == 0.5); /* 10x5 inside 10x10: widths are x2 - x1 + 1 */
    CHECK(voc_iou(beside, g) == 0.0);
    CHECK(voc_iou(corner, g) == 1.0 / 199.0); /* one shared pixel */
}

TEST(test_voc_one_exact_box_scores_100_everywhere)
{
    voc_dataset ds;
    voc_detections d = {0};
    voc_result r;
    moco_error err;
    voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
    CHECK(make_dataset(&ds, 1) == 0);
    CHECK(add_gt(&ds, 0, 0, 0, 10, 20, 50, 80) == 0 && add_gt(&ds, 0, 1, 0, 5, 5, 9, 9) == 0);
    CHECK(add_det(&d, 0, 0, 0.9, 10, 20, 50, 80) == 0 && add_det(&d, 0, 1, 0.5, 5, 5, 9, 9) == 0);
    CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
    for (int t = 0; t < VOC_NUM_THRESHOLDS; t++)
        CHECK(near(ap_at(&r, 0, t), 100) && near(r.map[t], 100));
    CHECK(near(r.AP, 100) && near(r.AP50, 100) && near(r.AP75, 100));
    CHECK(r.positives[0] == 1 && r.detections[0] == 1 && r.nevaluated == 2);
    voc_result_free(&r);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

TEST(test_voc_iou_equal_to_the_threshold_is_a_miss)
{
    voc_dataset ds;
    voc_detections d = {0};
    voc_result r;
    moco_error err;
    voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
    CHECK(make_dataset(&ds, 2) == 0);
    CHECK(add_gt(&ds, 0, 0, 0, 1, 1, 10, 10) == 0 && add_gt(&ds, 1, 1, 0, 1, 1, 10, 10) == 0);
    CHECK(add_det(&d, 0, 0, 0.9, 1, 1, 10, 5) == 0); /* IoU exactly 0.5 */
    CHECK(add_det(&d, 1, 1, 0.9, 1, 1, 10, 6) == 0); /* IoU exactly 0.6 */
    CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
    CHECK(ap_at(&r, 0, 0) == 0); /* "ovmax > ovthresh": 0.5 is not above 0.5 */
    CHECK(near(ap_at(&r, 1, 0), 100) && near(ap_at(&r, 1, 1), 100) && ap_at(&r, 1, 2) == 0);
    voc_result_free(&r);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

/* Two boxes, three detections: the second repeats the first box (a false positive). */
static int duplicates_case(voc_dataset *ds, voc_detections *d)
{
    if (make_dataset(ds, 1) || add_gt(ds, 0, 0, 0, 1, 1, 50, 50) || add_gt(ds, 0, 0, 0, 100, 100, 150, 150) ||
        add_gt(ds, 0, 1, 0, 1, 1, 5, 5))
        return -1;
    return add_det(d, 0, 0, 0.9, 1, 1, 50, 50) || add_det(d, 0, 0, 0.8, 1, 1, 50, 50) ||
           add_det(d, 0, 0, 0.7, 100, 100, 150, 150) || add_det(d, 0, 1, 0.5, 1, 1, 5, 5);
}

TEST(test_voc_duplicate_detection_is_a_false_positive)
{
    voc_dataset ds;
    voc_detections d = {0};
    voc_result r;
    moco_error err;
    voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
    CHECK(duplicates_case(&ds, &d) == 0);
    CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
    /* recall 0.5, 0.5, 1; precision 1, 1/2, 2/3: six points at 1, five at 2/3 */
    double want = eleven(6, 2.0 / 3.0, 5);
    for (int t = 0; t < VOC_NUM_THRESHOLDS; t++)
        CHECK(near(ap_at(&r, 0, t), want));
    CHECK(near(r.AP50, (want + 100) / 2) && near(r.AP, r.AP50) && near(r.AP75, r.AP50));
    voc_result_free(&r);
    opt.metric = VOC_METRIC_AREA; /* 0.5 * 1 + 0.5 * 2/3 */
    CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
    CHECK(near(ap_at(&r, 0, 0), (0.5 + 0.5 * 2.0 / 3.0) * 100));
    voc_result_free(&r);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

TEST(test_voc_best_box_already_taken_does_not_fall_back)
{
    voc_dataset ds;
    voc_detections d = {0};
    voc_result r;
    moco_error err;
    voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
    CHECK(make_dataset(&ds, 1) == 0);
    CHECK(add_gt(&ds, 0, 0, 0, 1, 1, 100, 100) == 0 && add_gt(&ds, 0, 0, 0, 31, 1, 130, 100) == 0);
    CHECK(add_gt(&ds, 0, 1, 0, 1, 1, 5, 5) == 0);
    CHECK(add_det(&d, 0, 0, 0.9, 1, 1, 100, 100) == 0);
    /* overlaps the first box most (9000/11000) and the free second one by 8000/12000: still a miss */
    CHECK(add_det(&d, 0, 0, 0.8, 11, 1, 110, 100) == 0);
    CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
    CHECK(near(ap_at(&r, 0, 0), eleven(6, 0, 5))); /* recall stops at 0.5 */
    voc_result_free(&r);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

TEST(test_voc_difficult_objects_are_neither_positive_nor_false)
{
    voc_dataset ds;
    voc_detections d = {0};
    voc_result r;
    moco_error err;
    voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
    CHECK(make_dataset(&ds, 1) == 0);
    CHECK(add_gt(&ds, 0, 0, 1, 1, 1, 50, 50) == 0 && add_gt(&ds, 0, 0, 0, 100, 100, 150, 150) == 0);
    CHECK(add_gt(&ds, 0, 1, 0, 1, 1, 5, 5) == 0);
    CHECK(add_det(&d, 0, 0, 0.9, 1, 1, 50, 50) == 0);     /* the difficult one, ranked first */
    CHECK(add_det(&d, 0, 0, 0.8, 1, 1, 50, 50) == 0);     /* again: still ignored, not a duplicate */
    CHECK(add_det(&d, 0, 0, 0.7, 100, 100, 150, 150) == 0);
    CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
    CHECK(r.positives[0] == 1 && r.difficult[0] == 1);
    CHECK(near(ap_at(&r, 0, 0), 100)); /* precision 0/eps = 0 until the hit, then 1 at recall 1 */
    voc_result_free(&r);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

TEST(test_voc_class_without_detections_scores_zero)
{
    voc_dataset ds;
    voc_detections d = {0};
    voc_result r;
    moco_error err;
    voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
    CHECK(make_dataset(&ds, 1) == 0);
    CHECK(add_gt(&ds, 0, 0, 0, 1, 1, 50, 50) == 0 && add_gt(&ds, 0, 1, 0, 1, 1, 5, 5) == 0);
    CHECK(add_det(&d, 0, 0, 0.9, 1, 1, 50, 50) == 0);
    CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
    CHECK(ap_at(&r, 1, 0) == 0 && r.detections[1] == 0);
    CHECK(near(r.AP50, 50) && near(r.AP, 50));
    voc_result_free(&r);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

TEST(test_voc_equal_scores_keep_their_input_order)
{
    for (int hit_first = 0; hit_first <= 1; hit_first++) {
        voc_dataset ds;
        voc_detections d = {0};
        voc_result r;
        moco_error err;
        voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
        CHECK(make_dataset(&ds, 1) == 0);
        CHECK(add_gt(&ds, 0, 0, 0, 1, 1, 50, 50) == 0 && add_gt(&ds, 0, 1, 0, 1, 1, 5, 5) == 0);
        CHECK(add_det(&d, 0, 0, 0.1, 1, 1, 50, 50) == 0); /* a lower score always ranks last */
        if (hit_first)
            CHECK(add_det(&d, 0, 0, 0.5, 1, 1, 50, 50) == 0 && add_det(&d, 0, 0, 0.5, 60, 60, 90, 90) == 0);
        else
            CHECK(add_det(&d, 0, 0, 0.5, 60, 60, 90, 90) == 0 && add_det(&d, 0, 0, 0.5, 1, 1, 50, 50) == 0);
        CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
        /* hit first: precision 1 at recall 1; miss first: 1/2 at recall 1 */
        CHECK(near(ap_at(&r, 0, 0), hit_first ? 100 : eleven(0, 0.5, 11)));
        voc_result_free(&r);
        voc_detections_free(&d);
        voc_dataset_free(&ds);
    }
}

TEST(test_voc_recall_of_exactly_0_3_misses_the_fourth_point)
{
    for (int hits = 3; hits <= 4; hits++) {
        voc_dataset ds;
        voc_detections d = {0};
        voc_result r;
        moco_error err;
        voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
        CHECK(make_dataset(&ds, 10) == 0);
        for (int i = 0; i < 10; i++)
            CHECK(add_gt(&ds, i, 0, 0, 1, 1, 20, 20) == 0);
        CHECK(add_gt(&ds, 0, 1, 0, 1, 1, 5, 5) == 0);
        for (int i = 0; i < hits; i++)
            CHECK(add_det(&d, i, 0, 0.9, 1, 1, 20, 20) == 0);
        CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
        /* 3/10 = 0.3 < 0.30000000000000004 (np.arange's fourth point); 4/10 = 0.4 reaches its point */
        CHECK(near(ap_at(&r, 0, 0), eleven(hits == 3 ? 3 : 5, 0, 0)));
        voc_result_free(&r);
        voc_detections_free(&d);
        voc_dataset_free(&ds);
    }
    double rec = 0.3, prec = 1;
    double ap;
    moco_error err;
    CHECK_OK(voc_ap(&rec, &prec, 1, VOC_METRIC_11POINT, &ap, &err), &err);
    CHECK(ap == 1.0 / 11 + 1.0 / 11 + 1.0 / 11);
}

TEST(test_voc_means_over_classes_then_thresholds)
{
    voc_dataset ds;
    voc_detections d = {0};
    voc_result r;
    moco_error err;
    voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
    CHECK(make_dataset(&ds, 1) == 0);
    CHECK(add_gt(&ds, 0, 0, 0, 1, 1, 100, 100) == 0 && add_gt(&ds, 0, 1, 0, 1, 1, 100, 100) == 0);
    CHECK(add_det(&d, 0, 0, 0.9, 1, 1, 100, 100) == 0);
    CHECK(add_det(&d, 0, 1, 0.9, 1, 1, 100, 70) == 0); /* IoU 0.7: a hit up to 0.65 */
    CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
    for (int t = 0; t < VOC_NUM_THRESHOLDS; t++)
        CHECK(near(r.map[t], t < 4 ? 100 : 50));
    CHECK(near(r.AP50, 100) && near(r.AP75, 50) && near(r.AP, 70));
    voc_result_free(&r);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

TEST(test_voc_class_without_positives_is_an_error_unless_skipped)
{
    voc_dataset ds;
    voc_detections d = {0};
    voc_result r;
    moco_error err;
    voc_eval_options opt = {.metric = VOC_METRIC_11POINT};
    CHECK(make_dataset(&ds, 1) == 0);
    CHECK(add_gt(&ds, 0, 0, 0, 1, 1, 100, 100) == 0 && add_gt(&ds, 0, 1, 1, 1, 1, 100, 100) == 0);
    CHECK(add_det(&d, 0, 0, 0.9, 1, 1, 100, 100) == 0 && add_det(&d, 0, 1, 0.9, 1, 1, 100, 100) == 0);
    CHECK(voc_evaluate(&ds, &d, &opt, &r, &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "class 'b' has no positive") && strstr(err.msg, "--skip-empty"));
    opt.skip_empty = 1;
    CHECK_OK(voc_evaluate(&ds, &d, &opt, &r, &err), &err);
    CHECK(r.nevaluated == 1 && r.evaluated[0] && !r.evaluated[1] && near(r.AP, 100));
    voc_result_free(&r);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

TEST(test_voc_sums_in_numpys_pairwise_order)
{
    double a[201];
    a[0] = 1e16;
    for (int i = 1; i < 201; i++)
        a[i] = 1.0;
    CHECK(voc_pairwise_sum(a, 201) == 1.0000000000000188e+16); /* np.sum; a plain loop gives 1e16 */
    CHECK(voc_pairwise_sum(a, 0) == 0 && voc_pairwise_sum(a + 1, 5) == 5);
}

/* ---- annotations ---- */

static const char good_xml[] =
    "<annotation>\n"
    "  <filename>img0.jpg</filename>\n"
    "  <object>\n"
    "    <name>a</name><pose>Left</pose><truncated>1</truncated>\n"
    "    <difficult> 1 </difficult>\n"
    "    <bndbox><xmin> 48</xmin><ymin>240</ymin><xmax>195 </xmax><ymax>371</ymax></bndbox>\n"
    "    <part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part>\n"
    "  </object>\n"
    "  <object><name>b</name><bndbox><xmin>8</xmin><ymin>12</ymin><xmax>352</xmax><ymax>498</ymax></bndbox>"
    "<bndbox><xmin>0</xmin><ymin>0</ymin><xmax>1</xmax><ymax>1</ymax></bndbox></object>\n"
    "  <nested><object><name>zebra</name></object></nested>\n"
    "</annotation>\n";

TEST(test_voc_parses_objects_as_detectron2_does)
{
    voc_dataset ds;
    moco_error err;
    CHECK(make_dataset(&ds, 1) == 0);
    CHECK_OK(voc_parse_annotation(&ds, 0, good_xml, strlen(good_xml), "img0.xml", &err), &err);
    const voc_image *im = &ds.images[0];
    CHECK(im->nobjects == 2); /* parts and objects below the root's children do not count */
    CHECK(im->objects[0].cls == 0 && im->objects[0].difficult == 1);
    CHECK(im->objects[0].box[0] == 48 && im->objects[0].box[1] == 240 && im->objects[0].box[2] == 195 &&
          im->objects[0].box[3] == 371);
    CHECK(im->objects[1].cls == 1 && im->objects[1].difficult == 0 && im->objects[1].box[2] == 352); /* first bndbox */
    voc_dataset_free(&ds);
}

static int parse_fails(const char *xml, const char *want)
{
    voc_dataset ds;
    moco_error err = {{0}};
    if (make_dataset(&ds, 1))
        return 0;
    int rc = voc_parse_annotation(&ds, 0, xml, strlen(xml), "bad.xml", &err);
    voc_dataset_free(&ds);
    if (rc == 0 || !strstr(err.msg, want)) {
        printf("# got: %s\n", rc ? err.msg : "(no error)");
        return 0;
    }
    return 1;
}

TEST(test_voc_bad_annotations_name_file_and_line)
{
    CHECK(parse_fails("<annotation>\n<object>\n<name>a</name>\n</annotation>\n", "bad.xml: line 4: malformed XML: mismatched tag"));
    CHECK(parse_fails("", "bad.xml: line 1: malformed XML: no element found"));
    CHECK(parse_fails("<annotation>\n\n<object><bndbox/></object></annotation>", "bad.xml: line 3: <object> has no <name>"));
    CHECK(parse_fails("<annotation><object>\n<name>zebra</name></object></annotation>",
                      "bad.xml: line 1: unknown class 'zebra'"));
    CHECK(parse_fails("<r><object><name>a</name></object></r>", "<object> 'a' has no <bndbox>"));
    CHECK(parse_fails("<r><object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object></r>",
                      "<bndbox> of 'a' has no <ymax>"));
    CHECK(parse_fails("<r><object><name>a</name><bndbox>\n<xmin>1.5</xmin></bndbox></object></r>",
                      "line 2: <xmin> '1.5' is not an integer"));
    CHECK(parse_fails("<r><object><name>a</name><difficult>yes</difficult></object></r>", "<difficult> 'yes' is not an integer"));
    CHECK(parse_fails("<r><object><name>a</name><bndbox><xmin>9</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
                      "</object></r>", "line 1: box of 'a' has xmax < xmin (9,1,5,5"));
    CHECK(parse_fails("<r><object><name>a<i/>b</name></object></r>", "<object> 'a' has no <bndbox>")); /* .text is "a" */
    CHECK(parse_fails("<r><object><name></name></object></r>", "<name> must hold 1..255 bytes"));
}

TEST(test_voc_loads_a_devkit_tree)
{
    char path[600];
    snprintf(path, sizeof path, "%s/t1", tmpdir);
    mkdir(path, 0755);
    mkdir(tmp_path("t1/Annotations"), 0755);
    mkdir(tmp_path("t1/ImageSets"), 0755);
    mkdir(tmp_path("t1/ImageSets/Main"), 0755);
    write_text(tmp_path("t1/ImageSets/Main/test.txt"), "img0\r\n\n  img1  \n");
    write_text(tmp_path("t1/Annotations/img0.xml"), good_xml);
    write_text(tmp_path("t1/Annotations/img1.xml"), "<annotation/>");
    const char *classes[] = {"a", "b"};
    voc_dataset ds;
    moco_error err;
    CHECK_OK(voc_dataset_init(&ds, 2, classes, &err), &err);
    CHECK_OK(voc_load(&ds, path, "test", &err), &err);
    CHECK(ds.nimages == 2 && ds.images[0].nobjects == 2 && ds.images[1].nobjects == 0);
    CHECK(voc_dataset_find(&ds, "img1", 4) == 1 && voc_dataset_find(&ds, "img1x", 4) == 1 &&
          voc_dataset_find(&ds, "img", 3) == -1);
    voc_dataset_free(&ds);

    write_text(tmp_path("t1/ImageSets/Main/two.txt"), "img0\nimg2\n");
    CHECK_OK(voc_dataset_init(&ds, 2, classes, &err), &err);
    CHECK(voc_load(&ds, path, "two", &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "Annotations/img2.xml: cannot open: No such file") != NULL);
    voc_dataset_free(&ds);

    write_text(tmp_path("t1/ImageSets/Main/dup.txt"), "img0\nimg1\nimg0\n");
    CHECK_OK(voc_dataset_init(&ds, 2, classes, &err), &err);
    CHECK(voc_load(&ds, path, "dup", &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "dup.txt: line 3: image id 'img0' is listed twice") != NULL);
    voc_dataset_free(&ds);

    CHECK_OK(voc_dataset_init(&ds, 2, classes, &err), &err);
    CHECK(voc_load(&ds, path, "nope", &err) == MOCO_ERR && strstr(err.msg, "nope.txt: cannot open"));
    voc_dataset_free(&ds);
}

TEST(test_voc_reads_class_lists)
{
    write_text(tmp_path("classes.txt"), "# mine\ncat\n\n dog \n");
    char **names;
    int n;
    moco_error err;
    CHECK_OK(voc_read_classes(tmp_path("classes.txt"), &names, &n, &err), &err);
    CHECK(n == 2 && strcmp(names[0], "cat") == 0 && strcmp(names[1], "dog") == 0);
    voc_free_classes(names, n);
    write_text(tmp_path("twice.txt"), "cat\ndog\ncat\n");
    CHECK(voc_read_classes(tmp_path("twice.txt"), &names, &n, &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "twice.txt: line 3: class 'cat' is listed twice") != NULL);
}

/* ---- detections ---- */

TEST(test_voc_result_lines_parse_and_unknown_ids_are_skipped)
{
    voc_dataset ds;
    voc_detections d = {0};
    moco_error err;
    voc_read_options opt = {0};
    CHECK(make_dataset(&ds, 2) == 0);
    const char *text = "img1 0.500 10.0 20.0 30.0 40.0\n\nimg9 0.9 1 1 2 2\r\nimg0\t1e-3  1 2 3 4\nimg7 0.1 1 1 2 2";
    CHECK_OK(voc_parse_results(&ds, 1, text, strlen(text), "b.txt", &opt, &d, &err), &err);
    CHECK(d.n == 2 && d.items[0].image == 1 && d.items[0].cls == 1 && d.items[0].score == 0.5 && d.items[0].box[3] == 40);
    CHECK(d.items[1].image == 0 && d.items[1].score == 1e-3);
    CHECK(d.skipped == 2 && strcmp(d.first_skipped, "b.txt: line 3: image id 'img9'") == 0);
    voc_detections_free(&d);
    opt.strict = 1;
    CHECK(voc_parse_results(&ds, 1, text, strlen(text), "b.txt", &opt, &d, &err) == MOCO_ERR);
    CHECK(strcmp(err.msg, "b.txt: line 3: image id 'img9' is not in the image set") == 0);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

static int results_fail(const char *text, const char *want)
{
    voc_dataset ds;
    voc_detections d = {0};
    moco_error err = {{0}};
    if (make_dataset(&ds, 1))
        return 0;
    int rc = voc_parse_results(&ds, 0, text, strlen(text), "a.txt", NULL, &d, &err);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
    if (rc == 0 || !strstr(err.msg, want)) {
        printf("# got: %s\n", rc ? err.msg : "(no error)");
        return 0;
    }
    return 1;
}

TEST(test_voc_bad_result_lines_name_file_and_line)
{
    CHECK(results_fail("img0 0.5 1 1 2 2\nimg0 nan 1 1 2 2\n", "a.txt: line 2: score is NaN"));
    CHECK(results_fail("img0 0.5 9 1 2 2\n", "a.txt: line 1: xmax < xmin"));
    CHECK(results_fail("img0 0.5 1 9 2 2\n", "a.txt: line 1: ymax < ymin"));
    CHECK(results_fail("img0 0.5 1 1 inf 2\n", "a.txt: line 1: a box coordinate is not finite"));
    CHECK(results_fail("img0 0.5 1 1 2\n", "a.txt: line 1: 5 fields, want 6"));
    CHECK(results_fail("\n\nimg0 0.5 1 1 2 2x\n", "a.txt: line 3: '2x' is not a number"));
}

/* A detections stream written by hand, as a detector would: one record per image. */
static int write_detector_stream(const char *path, int use_names, int64_t bad_class)
{
    moco_error err;
    stream_header *h = stream_header_new("detections", "test_voc");
    if (use_names) {
        const char *names[] = {"b", "a"}; /* the other order: mapped by name */
        stream_header_set_classes(h, 2, names);
    }
    stream_writer *w = stream_writer_open(path, NULL, h, &err);
    stream_header_free(h);
    if (!w)
        return -1;
    float boxes[8] = {9.0f, 19.0f, 30.0f, 40.0f, 0.04f, 0.0f, 5.25f, 5.0f};
    float scores[2] = {0.12345f, 0.9996f};
    int64_t classes[2] = {0, bad_class}, n = 2, bdims[2] = {2, 4}, idlen = 4;
    stream_record r;
    stream_record_init(&r, -1, -1);
    if (stream_record_add(&r, "image_id", DTYPE_U8, 1, &idlen, "img1", &err) ||
        stream_record_add(&r, "boxes", DTYPE_F32, 2, bdims, boxes, &err) ||
        stream_record_add(&r, "scores", DTYPE_F32, 1, &n, scores, &err) ||
        stream_record_add(&r, "classes", DTYPE_I64, 1, &n, classes, &err) || stream_write(w, &r, &err))
        return -1;
    stream_record_init(&r, 0, -1); /* image by its index in the set, no image_id */
    n = 1;
    bdims[0] = 1;
    if (stream_record_add(&r, "boxes", DTYPE_F32, 2, bdims, boxes, &err) ||
        stream_record_add(&r, "scores", DTYPE_F32, 1, &n, scores + 1, &err) ||
        stream_record_add(&r, "classes", DTYPE_I64, 1, &n, classes + 1, &err) || stream_write(w, &r, &err))
        return -1;
    return stream_writer_close(w, &err);
}

TEST(test_voc_stream_detections_become_what_detectron2_writes)
{
    voc_dataset ds;
    voc_detections d = {0};
    moco_error err;
    voc_read_options opt = {0};
    CHECK(make_dataset(&ds, 2) == 0);
    CHECK(write_detector_stream(tmp_path("det.tsz"), 0, 1) == 0);
    CHECK_OK(voc_read_stream(&ds, tmp_path("det.tsz"), &opt, &d, &err), &err);
    CHECK(d.n == 3 && d.items[0].image == 1 && d.items[2].image == 0);
    /* "%.3f" of the score; xmin, ymin + 1 in float32; "%.1f" of all four */
    CHECK(d.items[0].score == 0.123 && d.items[0].box[0] == 10.0 && d.items[0].box[1] == 20.0 &&
          d.items[0].box[2] == 30.0 && d.items[0].box[3] == 40.0);
    CHECK(d.items[1].score == 1.0 && d.items[1].cls == 1 && d.items[1].box[0] == 1.0 && d.items[1].box[2] == 5.2);
    voc_detections_free(&d);
    opt.exact = 1;
    CHECK_OK(voc_read_stream(&ds, tmp_path("det.tsz"), &opt, &d, &err), &err);
    CHECK(d.items[0].score == (double)0.12345f && d.items[1].box[0] == (double)(0.04f + 1.0f) &&
          d.items[1].box[2] == 5.25);
    voc_detections_free(&d);

    CHECK(write_detector_stream(tmp_path("named.tsz"), 1, 1) == 0); /* class 0 is "b", 1 is "a" */
    CHECK_OK(voc_read_stream(&ds, tmp_path("named.tsz"), &opt, &d, &err), &err);
    CHECK(d.items[0].cls == 1 && d.items[1].cls == 0);
    voc_detections_free(&d);

    CHECK(write_detector_stream(tmp_path("badclass.tsz"), 0, 7) == 0);
    CHECK(voc_read_stream(&ds, tmp_path("badclass.tsz"), &opt, &d, &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "badclass.tsz: record 1: detection 1: class 7 is not in 0..1") != NULL);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

TEST(test_voc_stream_round_trip_keeps_order_and_values)
{
    voc_dataset ds;
    voc_detections d = {0}, back = {0};
    moco_error err;
    voc_read_options opt = {0};
    CHECK(make_dataset(&ds, 3) == 0);
    CHECK(add_det(&d, 2, 0, 0.5, 48.3, 240.0, 195.1, 371.9) == 0 && add_det(&d, 2, 1, 0.125, 1, 1, 1, 1) == 0);
    CHECK(add_det(&d, 0, 0, 0.999, 0.5, 0.5, 10.5, 10.5) == 0 && add_det(&d, 2, 0, 0.5, 3, 4, 5, 6) == 0);
    CHECK_OK(voc_write_stream(&ds, &d, tmp_path("rt.tsz"), "test_voc", 0, NULL, &err), &err);
    CHECK_OK(voc_read_stream(&ds, tmp_path("rt.tsz"), &opt, &back, &err), &err);
    CHECK(back.n == d.n);
    for (size_t i = 0; i < d.n; i++)
        CHECK(memcmp(&back.items[i], &d.items[i], sizeof d.items[i]) == 0);
    voc_detections_free(&back);
    voc_detections_free(&d);
    voc_dataset_free(&ds);
}

TEST(test_voc_stream_of_another_kind_is_refused)
{
    moco_error err;
    stream_header *h = stream_header_new("features", "test_voc");
    stream_writer *w = stream_writer_open(tmp_path("feat.tsz"), NULL, h, &err);
    stream_header_free(h);
    CHECK(w != NULL);
    CHECK_OK(stream_writer_close(w, &err), &err);
    voc_dataset ds;
    voc_detections d = {0};
    CHECK(make_dataset(&ds, 1) == 0);
    CHECK(voc_read_stream(&ds, tmp_path("feat.tsz"), NULL, &d, &err) == MOCO_ERR);
    CHECK(strstr(err.msg, "feat.tsz: a 'features' stream, not detections") != NULL);
    voc_dataset_free(&ds);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_voc_iou_counts_pixels_inclusively);
    RUN(test_voc_one_exact_box_scores_100_everywhere);
    RUN(test_voc_iou_equal_to_the_threshold_is_a_miss);
    RUN(test_voc_duplicate_detection_is_a_false_positive);
    RUN(test_voc_best_box_already_taken_does_not_fall_back);
    RUN(test_voc_difficult_objects_are_neither_positive_nor_false);
    RUN(test_voc_class_without_detections_scores_zero);
    RUN(test_voc_equal_scores_keep_their_input_order);
    RUN(test_voc_recall_of_exactly_0_3_misses_the_fourth_point);
    RUN(test_voc_means_over_classes_then_thresholds);
    RUN(test_voc_class_without_positives_is_an_error_unless_skipped);
    RUN(test_voc_sums_in_numpys_pairwise_order);
    RUN(test_voc_parses_objects_as_detectron2_does);
    RUN(test_voc_bad_annotations_name_file_and_line);
    RUN(test_voc_loads_a_devkit_tree);
    RUN(test_voc_reads_class_lists);
    RUN(test_voc_result_lines_parse_and_unknown_ids_are_skipped);
    RUN(test_voc_bad_result_lines_name_file_and_line);
    RUN(test_voc_stream_detections_become_what_detectron2_writes);
    RUN(test_voc_stream_round_trip_keeps_order_and_values);
    RUN(test_voc_stream_of_another_kind_is_refused);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", tmpdir);
    TEST_EXIT();
}
