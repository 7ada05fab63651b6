"""Native kernel emitters, one module per op family, registered by these imports."""
from convc.codegen.kernels import conv, elementwise, gemm, norm, pool, shape, softmax  # noqa: F401
from convc.codegen.kernels import im2col, precision, reduce  # noqa: F401
from convc.codegen.kernels import conv_transpose, resize  # noqa: F401
from convc.codegen.kernels import int8_conv, int8_convert, int8_pool  # noqa: F401
from convc.codegen.kernels import conv_grad, elementwise_grad, loss, norm_grad, optim, pool_grad  # noqa: F401  (training)
