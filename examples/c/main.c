/* Run a model compiled ahead of time by convc, from C.
 *
 *     convc example lenet -o lenet.onnx
 *     convc compile lenet.onnx -o model.so          # writes model.so and model.h
 *     cc -O2 -Wall -o demo main.c -I. ./model.so -Wl,-rpath,'$ORIGIN'
 *     ./demo                  # a fixed input
 *     ./demo input.bin 2      # inputs from a file (raw float32, every input in order), 2 threads
 *
 * (or just `make`, see the Makefile). The program works for any model: it sizes its buffers with
 * the library's metadata queries. It prints each output's name and shape, then one value per line.
 */
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

static void print_shape(const int64_t *shape, int rank) {
    printf("[");
    for (int d = 0; d < rank; d++)
        printf(d ? ", %lld" : "%lld", (long long)shape[d]);
    printf("]");
}

int main(int argc, char **argv) {
    /* 1. Before anything else: the library must speak this ABI and its code must run on this CPU.
     *    (These functions are compiled for the baseline ISA: safe to call on any x86-64 / AArch64.) */
    if (convc_abi_version() != CONVC_ABI_VERSION) {
        fprintf(stderr, "model library has ABI %d, this program was built for %d\n", convc_abi_version(),
                CONVC_ABI_VERSION);
        return 1;
    }
    if (convc_check_cpu() != 0) {
        fprintf(stderr, "this CPU lacks features the model was compiled for:");
        for (int i = 0; convc_cpu_feature(i); i++)
            if (!convc_cpu_feature_ok(i))
                fprintf(stderr, " %s", convc_cpu_feature(i));
        fprintf(stderr, "\n(rebuild with: convc compile MODEL.onnx -o model.so --target x86-64-v3)\n");
        return 1;
    }
    fprintf(stderr, "model %s (convc %s, %s), %d input(s), %d output(s)\n", convc_model_name(), convc_version(),
            convc_target_cpu(), convc_num_inputs(), convc_num_outputs());

    /* 2. Inputs from a file, or a fixed pattern. */
    int n_in = convc_num_inputs(), n_out = convc_num_outputs();
    float **inputs = calloc((size_t)n_in, sizeof *inputs);
    float **outputs = calloc((size_t)n_out, sizeof *outputs);
    FILE *f = NULL;
    if (argc > 1 && !(f = fopen(argv[1], "rb"))) {
        perror(argv[1]);
        return 1;
    }
    for (int i = 0; i < n_in; i++) {
        int64_t n = convc_input_size(i);
        inputs[i] = malloc((size_t)n * sizeof(float));
        if (f) {
            if (fread(inputs[i], sizeof(float), (size_t)n, f) != (size_t)n) {
                fprintf(stderr, "%s: too short for input %s (%lld floats)\n", argv[1], convc_input_name(i),
                        (long long)n);
                return 1;
            }
        } else {
            for (int64_t k = 0; k < n; k++)
                inputs[i][k] = (float)((k % 17) - 8) / 8.0f;
        }
    }
    if (f)
        fclose(f);
    for (int i = 0; i < n_out; i++)
        outputs[i] = malloc((size_t)convc_output_size(i) * sizeof(float));

    /* 3. A context (arena + worker threads), one run, and cleanup. */
    int threads = argc > 2 ? atoi(argv[2]) : 0; /* 0: as many as the library was compiled for */
    convc_ctx *ctx = convc_create(threads);
    if (!ctx) {
        fprintf(stderr, "convc_create failed (out of memory?)\n");
        return 1;
    }
    if (convc_run_model(ctx, (const float *const *)inputs, outputs) != 0) {
        fprintf(stderr, "convc_run_model failed\n");
        return 1;
    }
    convc_destroy(ctx);

    for (int i = 0; i < n_out; i++) {
        printf("output %s ", convc_output_name(i));
        print_shape(convc_output_shape(i), convc_output_rank(i));
        printf("\n");
        for (int64_t k = 0; k < convc_output_size(i); k++)
            printf("%.9g\n", outputs[i][k]);
        free(outputs[i]);
    }
    for (int i = 0; i < n_in; i++)
        free(inputs[i]);
    free(inputs);
    free(outputs);
    return 0;
}
