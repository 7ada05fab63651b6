"""The runtime ABI of compiled code, declared once: its version, the context slots, the symbol names.

Every side of the ABI reads it from here: the code generator (codegen/module.py emits the entry
point, codegen/wrapper.py the C functions of a library), the JIT runtime (convc/runtime.py builds
the context block), the compile cache, the C header and the library loader (convc/load.py). It
imports neither llvmlite nor numpy: an application that loads a library needs numpy alone.

The entry point of every compiled module is

    void convc_run(void **ctx, const float *const *inputs, float *const *outputs)

where ``ctx`` points to ``ENTRY_SLOTS`` pointers indexed by ``Slot``. A library's ``convc_create``
allocates ``CONTEXT_SLOTS`` of them: the ones ``convc_run`` reads, then the training state.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# 2: a library ends with the integrity trailer of codegen/artifacts.py, which convc.load verifies
ABI_VERSION = 2


class Slot(IntEnum):
    """The pointers of a context block, by index."""
    ARENA = 0       # activations and kernel scratch, 64-byte aligned
    CONSTANTS = 1   # the table of constant pointers (graph constants, then weights packed at compile time)
    TIMESTAMPS = 2  # int64 nanosecond stamps before the first kernel and after each (instrumented builds), or NULL
    POOL = 3        # the thread pool from convc_pool_create, or NULL: run on the caller's thread alone
    STATE = 4       # a training library's state (parameters, optimizer moments, step, learning rate), or NULL


ENTRY_SLOTS = 4                # the slots convc_run reads
CONTEXT_SLOTS = len(Slot)      # the slots a library's convc_create allocates

# --- in every compiled module (JIT, cache entry, library) ---
ENTRY = "convc_run"
POOL_CREATE = "convc_pool_create"    # void *(int64_t nthreads)
POOL_DESTROY = "convc_pool_destroy"  # void (void *pool)
PARALLEL = "convc_parallel"          # the pool's fork-join call, used by the entry point

# --- the C API of a library (codegen/wrapper.py, declared in codegen/header.py) ---
CREATE = "convc_create"
DESTROY = "convc_destroy"
RUN_MODEL = "convc_run_model"
CONSTANT_TABLE = "convc_constant_table"
NUM_CONSTANTS = "convc_num_constants"
ABI_VERSION_FN = "convc_abi_version"
VERSION = "convc_version"
MODEL_NAME = "convc_model_name"
TARGET_TRIPLE = "convc_target_triple"
TARGET_CPU = "convc_target_cpu"
METADATA_JSON = "convc_metadata_json"
MAX_THREADS = "convc_max_threads"
ARENA_BYTES = "convc_arena_bytes"
CPU_FEATURES = "convc_cpu_features"
CHECK_CPU = "convc_check_cpu"
CPU_FEATURE = "convc_cpu_feature"
CPU_FEATURE_OK = "convc_cpu_feature_ok"


@dataclass(frozen=True)
class SpecTable:
    """Functions describing a list of tensors: ``int count(void)`` and, for 0 <= i < count,
    ``prefix_name(i)``, ``_dtype(i)``, ``_rank(i)``, ``_shape(i)``, ``_size(i)``."""
    count: str
    prefix: str

    FIELDS = ("name", "dtype", "rank", "shape", "size")

    def function(self, field: str) -> str:
        return f"{self.prefix}_{field}"

    def functions(self) -> tuple[str, ...]:
        return (self.count, *(self.function(f) for f in self.FIELDS))


INPUTS = SpecTable("convc_num_inputs", "convc_input")
OUTPUTS = SpecTable("convc_num_outputs", "convc_output")

# what every library exports and its header declares
LIBRARY_FUNCTIONS = (ENTRY, POOL_CREATE, POOL_DESTROY, CREATE, DESTROY, RUN_MODEL, CONSTANT_TABLE, NUM_CONSTANTS,
                     ABI_VERSION_FN, VERSION, MODEL_NAME, TARGET_TRIPLE, TARGET_CPU, METADATA_JSON, MAX_THREADS,
                     ARENA_BYTES, CPU_FEATURES, CHECK_CPU, CPU_FEATURE, CPU_FEATURE_OK,
                     *INPUTS.functions(), *OUTPUTS.functions())

# --- a training library (convc compile --train) ---
TRAIN_STEP = "convc_train_step"
SET_LEARNING_RATE = "convc_set_learning_rate"
LEARNING_RATE = "convc_learning_rate"
STEPS_DONE = "convc_steps_done"
STATE_DATA = "convc_state_data"
LABELS_SIZE = "convc_labels_size"
LABELS_DTYPE = "convc_labels_dtype"
LOSS_NAME = "convc_loss_name"
OPTIMIZER_NAME = "convc_optimizer_name"
STATE = SpecTable("convc_num_state", "convc_state")
# the step in two calls around the gradient buffer (data-parallel training, accumulation)
COMPUTE_GRADIENTS = "convc_compute_gradients"
APPLY_GRADIENTS = "convc_apply_gradients"
GRADIENTS = "convc_gradients"
GRADIENTS_SIZE = "convc_gradients_size"
GRADIENT_OFFSET = "convc_gradient_offset"
# a model with several inputs or outputs: the step takes arrays of pointers, one per model input and
# one targets array per output (convc_label_*), each output with its loss and the loss's weight
TRAIN_STEP_V = "convc_train_step_v"
COMPUTE_GRADIENTS_V = "convc_compute_gradients_v"
# the same with a run-time batch: the first n <= compiled batch samples of every input and target
TRAIN_STEP_N = "convc_train_step_n"
COMPUTE_GRADIENTS_N = "convc_compute_gradients_n"
LABELS = SpecTable("convc_num_labels", "convc_label")
LABEL_LOSS = "convc_label_loss"
LOSS_WEIGHT = "convc_loss_weight"
TRAINING_FUNCTIONS = (TRAIN_STEP, SET_LEARNING_RATE, LEARNING_RATE, STEPS_DONE, STATE_DATA, LABELS_SIZE, LABELS_DTYPE,
                      LOSS_NAME, OPTIMIZER_NAME, *STATE.functions(), COMPUTE_GRADIENTS, APPLY_GRADIENTS, GRADIENTS,
                      GRADIENTS_SIZE, GRADIENT_OFFSET, TRAIN_STEP_V, COMPUTE_GRADIENTS_V, *LABELS.functions(),
                      LABEL_LOSS, LOSS_WEIGHT, TRAIN_STEP_N, COMPUTE_GRADIENTS_N)
# the training step's module is linked into the library beside the eval forward's: its own copies
# of the module-level functions are renamed with this prefix (convc_train_convc_run, ...)
TRAIN_MODULE_PREFIX = "convc_train_"
# and so are those of the gradient step's and the update's modules (compute / apply gradients)
GRAD_MODULE_PREFIX, APPLY_MODULE_PREFIX = "convc_grad_", "convc_apply_"
MODULE_FUNCTIONS = (ENTRY, POOL_CREATE, POOL_DESTROY, PARALLEL)
