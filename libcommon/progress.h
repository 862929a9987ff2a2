/* progress.h — a one-line progress bar on stderr: count, rate, ETA.
 *
 * Drawn only when stderr is a terminal and the tool was not asked to be quiet (DESIGN §6), so
 * logs and pipelines stay clean; redrawn at most ten times a second, so updating it per record is
 * cheap. A NULL progress (from progress_start when inactive) is accepted by every call. */
#ifndef MOCO_PROGRESS_H
#define MOCO_PROGRESS_H

#include <stdint.h>

typedef struct progress progress;

/* total < 0: unknown (no ETA). Returns NULL (inactive) when quiet or stderr is not a terminal. */
progress *progress_start(const char *label, int64_t total, int quiet);
void progress_update(progress *p, int64_t done);
/* Draw the final state, end the line, free. */
void progress_finish(progress *p);

/* Monotonic seconds, for rates and timings. */
double progress_now(void);

#endif
