/* cli.h — what every tool's main shares (DESIGN §6): its name in messages, SIGPIPE handling,
 * --help/--version text, strict number parsing, the default thread count.
 *
 * Conventions: exit 0 success, 1 failure, 2 usage error. Errors go to stderr as
 * "tool: file: record N: what happened (what to do)". These helpers print but never exit: a tool's
 * main returns the code they give back. */
#ifndef MOCO_CLI_H
#define MOCO_CLI_H

#include <stdint.h>

enum { EXIT_USAGE = 2 };

/* Remember the tool's name for messages and ignore SIGPIPE, so a closed pipe shows up as EPIPE
 * from write() and the producer can finish quietly with status 0. Call first in main. */
void cli_init(const char *tool_name);
const char *cli_tool(void);

/* "tool: message" on stderr; returns 1 (EXIT_FAILURE) so `return cli_error(...)` reads well. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "tool: message" and "Try 'tool --help'." on stderr; returns EXIT_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "tool: warning: message" on stderr. */
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "tool (moco) 0.1.0" on stdout; returns 0. */
int cli_version(void);

/* Parse all of s as an integer / real within [min, max]; 0 on success, EXIT_USAGE after printing
 * "tool: --option: 'abc' is not an integer in min..max". */
int cli_int(const char *option, const char *s, int64_t min, int64_t max, int64_t *out);
int cli_real(const char *option, const char *s, double min, double max, double *out);

/* Parse "a,b,c" (n numbers, each within [min, max]) into out; EXIT_USAGE after a message. */
int cli_reals(const char *option, const char *s, int n, double min, double max, double *out);
/* The same for 1 to `most` numbers; *count gets how many. */
int cli_real_list(const char *option, const char *s, int most, double min, double max, double *out, int *count);

/* Parse "I/N" (0 <= I < N), the --part of a process among N; EXIT_USAGE after a message. */
int cli_part(const char *option, const char *s, int *part, int *parts);
/* --device: "cpu" -> -1; "cuda" -> 0 with *given = 0 (the caller may pick, e.g. by rank); "cuda:N"
 * -> N with *given = 1. Whether there is a CUDA backend to run it is found when it is loaded
 * (gpu_api.h). */
int cli_device(const char *s, int *device, int *given);
/* --precision: "bf16" -> *bf16 = 1, "f32" -> 0; anything else a usage error. */
int cli_precision(const char *s, int *bf16);

/* Online processor count: the default for --threads. */
int cli_default_threads(void);

#endif
