/* Train a model compiled with `convc compile --train`, from C.
 *
 *     convc compile lenet.onnx -o train.so --train --batch 8 --optimizer adam
 *     cc -O2 -Wall -o train_demo train.c -I. ./train.so -Wl,-rpath,'$ORIGIN'
 *     ./train_demo 20          # 20 steps on a fixed synthetic batch, prints each loss
 *
 * (the header is train.h: the library's name with .h; `make train_demo` does all of it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 10;
    if (convc_abi_version() != CONVC_ABI_VERSION || convc_check_cpu() != 0) {
        fprintf(stderr, "this library cannot run here (ABI %d, %d CPU feature(s) missing)\n", convc_abi_version(),
                convc_check_cpu());
        return 1;
    }
    if (strcmp(convc_labels_dtype(), "int64") != 0) {
        fprintf(stderr, "this example feeds class indices; the library's loss is %s\n", convc_loss_name());
        return 1;
    }
    int64_t n_x = convc_input_size(0), n_y = convc_labels_size();
    int64_t classes = convc_output_shape(0)[1];
    float *x = malloc((size_t)n_x * sizeof *x);
    int64_t *labels = malloc((size_t)n_y * sizeof *labels);
    for (int64_t k = 0; k < n_x; k++)
        x[k] = (float)((k * 7) % 13 - 6) / 6.0f;
    for (int64_t i = 0; i < n_y; i++)
        labels[i] = i % classes;

    convc_ctx *ctx = convc_create(1);
    if (!ctx) {
        fprintf(stderr, "convc_create failed\n");
        return 1;
    }
    fprintf(stderr, "training %s with %s, learning rate %g\n", convc_model_name(), convc_optimizer_name(),
            (double)convc_learning_rate(ctx));
    for (int s = 0; s < steps; s++) {
        float loss;
        int rc = convc_train_step(ctx, x, labels, &loss);
        if (rc == 2) {
            fprintf(stderr, "step %d: not finite, skipped\n", s + 1);
            continue;
        }
        if (rc != 0)
            return 1;
        printf("%.9g\n", (double)loss);
    }
    fprintf(stderr, "%lld steps done\n", (long long)convc_steps_done(ctx));
    convc_destroy(ctx);
    free(x);
    free(labels);
    return 0;
}
