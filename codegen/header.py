"""The C header of a library: the model's tensors, how to call it, and every exported function.

``header_text`` writes the inference API; a training library adds ``TRAINING_DECLS``. The names
are those of convc/abi.py, which codegen/wrapper.py defines.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from convc.codegen.artifacts import c_escape, c_identifier, c_string
from convc.codegen.target import AotTarget, checkable

from convc import abi
from convc.abi import Slot


def guard_name(header: Path) -> str:
    """The include guard of a header file: CONVC_<STEM>_H."""
    return "CONVC_" + c_identifier(header.stem.upper()) + "_H"


def header_text(meta: dict, target: AotTarget, library: str, guard: str, extra_decls: str = "") -> str:
    checked, unchecked = checkable(target)

    def io_lines(kind: str) -> str:
        return "\n".join(f" *   {kind} {i}: {c_string(s['name']):24} {c_escape(s['dtype'])} [{', '.join(map(str, s['shape']))}]"
                         f" ({int(np.prod(s['shape'], dtype=np.int64))} elements)"
                         for i, s in enumerate(meta[kind + "s"]))
    features = "\n".join(" *     " + line for line in textwrap.wrap(c_escape(", ".join(target.required)) or "(baseline)", 88))
    defines = [f"#define CONVC_NUM_INPUTS {len(meta['inputs'])}", f"#define CONVC_NUM_OUTPUTS {len(meta['outputs'])}"]
    for kind in ("input", "output"):
        for i, s in enumerate(meta[kind + "s"]):
            defines.append(f"#define CONVC_{kind.upper()}{i}_SIZE {int(np.prod(s['shape'], dtype=np.int64))}")
    return f"""/* {c_string(Path(library).name)}: the model {c_string(meta['name'])} compiled ahead of time by convc {c_escape(meta['convc_version'])}.
 *
 * Generated file: do not edit. The library depends only on libc, libm and pthreads.
 * Target: {c_escape(target.name)} ({c_escape(target.triple)}, cpu {c_escape(target.cpu)}); compiled for up to {meta['threads']} thread(s).
 *
 * Tensors are dense row-major float32 arrays (C order) with these fixed shapes:
{io_lines('input')}
{io_lines('output')}
 *
 * Usage:
 *     if (convc_abi_version() != CONVC_ABI_VERSION || convc_check_cpu() != 0) {{ ...refuse... }}
 *     convc_ctx *ctx = convc_create(0);               // 0: the compiled thread count
 *     const float *in[CONVC_NUM_INPUTS] = {{ x }};
 *     float *out[CONVC_NUM_OUTPUTS] = {{ y }};
 *     convc_run_model(ctx, in, out);
 *     convc_destroy(ctx);
 *
 * Threads: a context owns an arena (activations and scratch) and a pool of worker threads. One
 * context runs one call at a time; create one context per thread that runs the model concurrently.
 * The weights are read-only and shared by all contexts.
 *
 * CPU: the code uses these CPU features:
{features}
 * convc_check_cpu() verifies {'all of them' if not unchecked else f'{len(checked)} of them (not checkable: {c_escape(", ".join(unchecked))})'}
 * on the running CPU (and, on x86, that the OS enables the AVX/AVX-512/AMX registers). The metadata
 * functions and convc_check_cpu are compiled for the architecture's baseline, so they are safe
 * to call on any CPU; call convc_check_cpu before anything else. convc_create refuses (NULL)
 * when the check fails.
 */
#ifndef {guard}
#define {guard}

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define CONVC_ABI_VERSION {abi.ABI_VERSION}
{chr(10).join(defines)}

typedef struct convc_ctx convc_ctx;

/* --- running the model --- */

/* A context: allocates the arena ({meta['arena_bytes']} bytes, 64-byte aligned) and starts
 * nthreads-1 worker threads (nthreads <= 0 or above {meta['threads']}: {meta['threads']}). NULL when
 * this CPU lacks a required feature or memory runs out. */
convc_ctx *convc_create(int nthreads);
void convc_destroy(convc_ctx *ctx);

/* Run once: inputs[i] points to convc_input_size(i) floats, outputs[i] to convc_output_size(i)
 * floats the call overwrites. Returns 0, or 1 when ctx, inputs or outputs is NULL. */
int convc_run_model(convc_ctx *ctx, const float *const *inputs, float *const *outputs);

/* --- metadata (safe to call on any CPU of the architecture) --- */

int convc_abi_version(void);            /* CONVC_ABI_VERSION of the library */
const char *convc_version(void);        /* the convc version that built it */
const char *convc_model_name(void);
const char *convc_target_triple(void);
const char *convc_target_cpu(void);
const char *convc_metadata_json(void);  /* everything below as one JSON object */
int convc_max_threads(void);
int64_t convc_arena_bytes(void);

int convc_num_inputs(void);
int convc_num_outputs(void);
const char *convc_input_name(int i);    /* NULL when i is out of range */
const char *convc_output_name(int i);
const char *convc_input_dtype(int i);   /* "float32" */
const char *convc_output_dtype(int i);
int convc_input_rank(int i);            /* -1 when i is out of range */
int convc_output_rank(int i);
const int64_t *convc_input_shape(int i);
const int64_t *convc_output_shape(int i);
int64_t convc_input_size(int i);        /* elements */
int64_t convc_output_size(int i);

/* --- CPU check --- */

const char *convc_cpu_features(void);   /* required features, comma-separated LLVM names */
int convc_check_cpu(void);              /* 0: this CPU runs the library; else the number missing */
const char *convc_cpu_feature(int i);   /* the i-th required feature */
int convc_cpu_feature_ok(int i);        /* 1 when the running CPU has it (or it cannot be checked) */

{extra_decls}/* --- the raw entry point (convc's own runtime uses it; prefer convc_run_model) --- */

/* ctx[{int(Slot.ARENA)}] = 64-byte aligned arena, ctx[{int(Slot.CONSTANTS)}] = convc_constant_table(), ctx[{int(Slot.TIMESTAMPS)}] = NULL,
 * ctx[{int(Slot.POOL)}] = a pool from convc_pool_create(n) or NULL (single-threaded). */
void convc_run(void **ctx, const float *const *inputs, float *const *outputs);
void *const *convc_constant_table(void);
int convc_num_constants(void);
void *convc_pool_create(int64_t nthreads);
void convc_pool_destroy(void *pool);

#ifdef __cplusplus
}}
#endif

#endif /* {guard} */
"""


def training_decls(targets: list[tuple[str, str, tuple[int, ...]]], batch: int) -> str:
    """The training part of the header: ``TRAINING_DECLS`` after the compiled batch and the
    targets' sizes as constants (``targets``: per output, its targets' name, dtype and shape), for
    static buffers in C."""
    defines = [f"#define CONVC_TRAIN_BATCH {int(batch)}  /* the most samples a step takes */",
               f"#define CONVC_NUM_LABELS {len(targets)}"] + [
        f"#define CONVC_LABEL{j}_SIZE {int(np.prod(shape, dtype=np.int64))}  /* {c_escape(dtype)} */"
        for j, (_, dtype, shape) in enumerate(targets)]
    return "\n".join(defines) + "\n\n" + TRAINING_DECLS


TRAINING_DECLS = """/* --- training (this library was built with --train) ---
 *
 * A context owns a training state (weights, BN running statistics, optimizer moments, the step
 * counter and the learning rate), initialized from the compiled model's weights. Training runs on
 * the calling thread. convc_run_model runs the model in eval mode (running statistics, no dropout)
 * on the context's current weights. */

/* One step on a batch of CONVC_TRAIN_BATCH samples: inputs[i] points to convc_input_size(i) floats
 * (every model input, in convc_input_name order) and labels[j] to the targets of output j:
 * convc_label_size(j) elements of convc_label_dtype(j) ("int64" class indices for cross-entropy
 * and nll, each in [0, classes), or, if the loss has an ignore_index, that value or -1 to skip
 * the sample; else "float32" targets shaped like the output). Output j's loss is convc_label_loss(j);
 * the step trains on the sum of the outputs' losses, each times convc_loss_weight(j) (1 unless the
 * library was built with loss weights). *loss (if not NULL) receives that sum before the update.
 * Returns 0; 2 when the loss or a gradient was not finite (nothing was updated); 1 when an
 * argument or a pointer in the arrays is NULL; 6 (changing nothing) when a class index is outside
 * [0, classes) and does not mean ignored. */
int convc_train_step_v(convc_ctx *ctx, const float *const *inputs, const void *const *labels, float *loss);
/* The same on a smaller batch (the last of an epoch), without another library: n samples, 1 <= n <=
 * CONVC_TRAIN_BATCH; every array holds n samples (convc_input_size(i) / CONVC_TRAIN_BATCH * n
 * elements). The loss is the mean over the n samples and BatchNorm's batch statistics count them
 * alone, as convc.Trainer steps a smaller batch (it is copied into a zeroed block of the compiled
 * batch, allocated and freed by the call when n < CONVC_TRAIN_BATCH). Returns as convc_train_step_v,
 * and 4 (changing nothing) when n is out of range, 5 when that block cannot be allocated. */
int convc_train_step_n(convc_ctx *ctx, const float *const *inputs, const void *const *labels, int64_t n,
                       float *loss);
/* The same for a model with one input and one output: x has convc_input_size(0) floats, labels
 * convc_labels_size() elements of convc_labels_dtype(). Returns 3 (and does nothing) for a model
 * with several inputs or outputs: call convc_train_step_v. */
int convc_train_step(convc_ctx *ctx, const float *x, const void *labels, float *loss);
void convc_set_learning_rate(convc_ctx *ctx, float lr);
float convc_learning_rate(convc_ctx *ctx);
int64_t convc_steps_done(convc_ctx *ctx);
int64_t convc_labels_size(void);       /* output 0's targets: convc_label_size(0) */
const char *convc_labels_dtype(void);   /* convc_label_dtype(0) */
const char *convc_loss_name(void);      /* convc_label_loss(0) */
const char *convc_optimizer_name(void);

/* The targets, one entry per model output (convc_num_labels() == convc_num_outputs()); NULL, -1
 * or NaN when j is out of range. */
int convc_num_labels(void);
const char *convc_label_name(int j);
const char *convc_label_dtype(int j);
int convc_label_rank(int j);
const int64_t *convc_label_shape(int j);
int64_t convc_label_size(int j);
const char *convc_label_loss(int j);    /* "cross_entropy", "mse", ... */
float convc_loss_weight(int j);

/* The training state, read/write (copy weights out after training, or load saved ones):
 * convc_state_data(ctx, i) points to convc_state_size(i) elements of convc_state_dtype(i). */
int convc_num_state(void);
const char *convc_state_name(int i);
const char *convc_state_dtype(int i);
int convc_state_rank(int i);
const int64_t *convc_state_shape(int i);
int64_t convc_state_size(int i);
void *convc_state_data(convc_ctx *ctx, int i);

/* The same step in two calls, for data-parallel training (allreduce the gradients in between) and
 * gradient accumulation. convc_compute_gradients_v (inputs and labels as convc_train_step_v's)
 * runs forward, loss and backward on a batch and adds every parameter's gradient into the
 * context's gradient buffer, which it zeroes first unless accumulate is non-zero; *loss (if not
 * NULL) receives the batch's loss. It changes no weight.
 * convc_apply_gradients then applies the optimizer update from the buffer as it is, with the
 * finite check, BatchNorm's running statistics (from the last batch) and the step counter, exactly
 * as convc_train_step does. Returns 0; 2 when the loss or a gradient was not finite (nothing was
 * updated) or no gradients were computed since the last apply; 1 for a NULL argument.
 * The buffer: convc_gradients(ctx) points to convc_gradients_size() floats; the gradient of state
 * entry i (a parameter) starts at float convc_gradient_offset(i), -1 for state that is not a
 * parameter, and has convc_state_size(i) elements (64-byte aligned; the padding between stays 0).
 * Each batch's gradient is of its mean loss: k accumulated batches sum to k times the mean. */
int convc_compute_gradients_v(convc_ctx *ctx, const float *const *inputs, const void *const *labels, float *loss,
                              int accumulate);
/* The same on n samples, 1 <= n <= CONVC_TRAIN_BATCH, as convc_train_step_n (4: n out of range,
 * 5: out of memory, 6: a class index out of range); convc_apply_gradients then updates
 * BatchNorm's running statistics from those n samples. */
int convc_compute_gradients_n(convc_ctx *ctx, const float *const *inputs, const void *const *labels, int64_t n,
                              float *loss, int accumulate);
/* One input and one output (3 otherwise, as convc_train_step). */
int convc_compute_gradients(convc_ctx *ctx, const float *x, const void *labels, float *loss, int accumulate);
int convc_apply_gradients(convc_ctx *ctx);
float *convc_gradients(convc_ctx *ctx);
int64_t convc_gradients_size(void);
int64_t convc_gradient_offset(int i);

"""
