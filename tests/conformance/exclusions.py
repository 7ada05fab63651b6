"""Every conformance case of an op convc claims that is not run, with the reason, in one place.

Cases whose graph uses an op convc does not claim (no converter) are skipped by rule in
test_onnx_backend.py and are not listed here. test_exclusions_are_current checks that every name
below is a collected case whose ops convc claims.

Why a non-float32 variant is excluded even when it would pass: convc compiles float32 tensors;
the backend compiles every non-float32 input in as a constant, so an integer Add (or a Cast from
float16) folds at import and no compiled code runs. Counting those as passes would say nothing
about convc's kernels.

What is left (onnx 1.23's cases; 921 of them use only ops convc claims, 234 of those are listed here):
- Cast/CastLike to or from another type (116) and integer/float16/float64 variants of float ops (58):
  convc's tensors are float32 (and uint8/int8 where quantized); run, they would fold at import and test
  nothing. They leave the list if convc compiles other dtypes.
- quantization formats convc does not compute with (int16, 4- and 2-bit, float8, blocked, float16
  scales, dynamic scales), training-mode BatchNormalization and Dropout, MaxPool's Indices output,
  optional and sequence inputs, zero-size tensors (the rotary-embedding expansions split one off).
Every Reduce* case (keepdims, empty axes, noop_with_empty_axes) and every Gather case with constant indices
runs and passes; none of them is listed (the ReduceL2 and ReduceLogSumExp expansions use CastLike and are
skipped by the rule below). Cases of ops convc does not claim are
skipped by rule, not listed: mostly integer and boolean logic (Equal, Mod, And, Not, Less, Range), attention
and sequence models (Attention, LSTM, Scan, Loop), losses, CastLike and GatherElements (conftest.py prints
the tally).
"""
from __future__ import annotations

# Cast/CastLike between float32 and another type: only float32 -> float32 compiles (as an Identity)
_CAST = [
    "test_cast_BFLOAT16_to_FLOAT",
    "test_cast_DOUBLE_to_FLOAT",
    "test_cast_DOUBLE_to_FLOAT16",
    "test_cast_FLOAT16_to_DOUBLE",
    "test_cast_FLOAT16_to_FLOAT",
    "test_cast_FLOAT16_to_FLOAT4E2M1",
    "test_cast_FLOAT16_to_FLOAT8E4M3FN",
    "test_cast_FLOAT16_to_FLOAT8E4M3FNUZ",
    "test_cast_FLOAT16_to_FLOAT8E5M2",
    "test_cast_FLOAT16_to_FLOAT8E5M2FNUZ",
    "test_cast_FLOAT16_to_INT2",
    "test_cast_FLOAT16_to_INT4",
    "test_cast_FLOAT16_to_UINT2",
    "test_cast_FLOAT16_to_UINT4",
    "test_cast_FLOAT4E2M1_to_FLOAT",
    "test_cast_FLOAT4E2M1_to_FLOAT16",
    "test_cast_FLOAT8E4M3FNUZ_to_FLOAT",
    "test_cast_FLOAT8E4M3FNUZ_to_FLOAT16",
    "test_cast_FLOAT8E4M3FN_to_FLOAT",
    "test_cast_FLOAT8E4M3FN_to_FLOAT16",
    "test_cast_FLOAT8E5M2FNUZ_to_FLOAT",
    "test_cast_FLOAT8E5M2FNUZ_to_FLOAT16",
    "test_cast_FLOAT8E5M2_to_FLOAT",
    "test_cast_FLOAT8E5M2_to_FLOAT16",
    "test_cast_FLOAT_to_BFLOAT16",
    "test_cast_FLOAT_to_DOUBLE",
    "test_cast_FLOAT_to_FLOAT16",
    "test_cast_FLOAT_to_FLOAT4E2M1",
    "test_cast_FLOAT_to_FLOAT8E4M3FN",
    "test_cast_FLOAT_to_FLOAT8E4M3FNUZ",
    "test_cast_FLOAT_to_FLOAT8E5M2",
    "test_cast_FLOAT_to_FLOAT8E5M2FNUZ",
    "test_cast_FLOAT_to_INT2",
    "test_cast_FLOAT_to_INT4",
    "test_cast_FLOAT_to_UINT2",
    "test_cast_FLOAT_to_UINT4",
    "test_cast_INT2_to_FLOAT",
    "test_cast_INT2_to_FLOAT16",
    "test_cast_INT2_to_INT8",
    "test_cast_INT4_to_FLOAT",
    "test_cast_INT4_to_FLOAT16",
    "test_cast_INT4_to_INT8",
    "test_cast_UINT2_to_FLOAT",
    "test_cast_UINT2_to_FLOAT16",
    "test_cast_UINT2_to_UINT8",
    "test_cast_UINT4_to_FLOAT",
    "test_cast_UINT4_to_FLOAT16",
    "test_cast_UINT4_to_UINT8",
    "test_cast_e8m0_FLOAT16_to_FLOAT8E8M0",
    "test_cast_e8m0_FLOAT8E8M0_to_FLOAT",
    "test_cast_e8m0_FLOAT8E8M0_to_FLOAT16",
    "test_cast_e8m0_FLOAT_to_FLOAT8E8M0",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FN",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FN",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ",
    "test_castlike_BFLOAT16_to_FLOAT_expanded",
    "test_castlike_DOUBLE_to_FLOAT16_expanded",
    "test_castlike_DOUBLE_to_FLOAT_expanded",
    "test_castlike_FLOAT16_to_DOUBLE_expanded",
    "test_castlike_FLOAT16_to_FLOAT4E2M1_expanded",
    "test_castlike_FLOAT16_to_FLOAT8E4M3FNUZ_expanded",
    "test_castlike_FLOAT16_to_FLOAT8E4M3FN_expanded",
    "test_castlike_FLOAT16_to_FLOAT8E5M2FNUZ_expanded",
    "test_castlike_FLOAT16_to_FLOAT8E5M2_expanded",
    "test_castlike_FLOAT16_to_FLOAT_expanded",
    "test_castlike_FLOAT16_to_INT2_expanded",
    "test_castlike_FLOAT16_to_INT4_expanded",
    "test_castlike_FLOAT16_to_UINT2_expanded",
    "test_castlike_FLOAT16_to_UINT4_expanded",
    "test_castlike_FLOAT4E2M1_to_FLOAT16_expanded",
    "test_castlike_FLOAT4E2M1_to_FLOAT_expanded",
    "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT16_expanded",
    "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT_expanded",
    "test_castlike_FLOAT8E4M3FN_to_FLOAT16_expanded",
    "test_castlike_FLOAT8E4M3FN_to_FLOAT_expanded",
    "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT16_expanded",
    "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT_expanded",
    "test_castlike_FLOAT8E5M2_to_FLOAT16_expanded",
    "test_castlike_FLOAT8E5M2_to_FLOAT_expanded",
    "test_castlike_FLOAT_to_BFLOAT16_expanded",
    "test_castlike_FLOAT_to_DOUBLE_expanded",
    "test_castlike_FLOAT_to_FLOAT16_expanded",
    "test_castlike_FLOAT_to_FLOAT4E2M1_expanded",
    "test_castlike_FLOAT_to_FLOAT8E4M3FNUZ_expanded",
    "test_castlike_FLOAT_to_FLOAT8E4M3FN_expanded",
    "test_castlike_FLOAT_to_FLOAT8E5M2FNUZ_expanded",
    "test_castlike_FLOAT_to_FLOAT8E5M2_expanded",
    "test_castlike_FLOAT_to_INT2_expanded",
    "test_castlike_FLOAT_to_INT4_expanded",
    "test_castlike_FLOAT_to_UINT2_expanded",
    "test_castlike_FLOAT_to_UINT4_expanded",
    "test_castlike_INT2_to_FLOAT16_expanded",
    "test_castlike_INT2_to_FLOAT_expanded",
    "test_castlike_INT2_to_INT8_expanded",
    "test_castlike_INT4_to_FLOAT16_expanded",
    "test_castlike_INT4_to_FLOAT_expanded",
    "test_castlike_INT4_to_INT8_expanded",
    "test_castlike_UINT2_to_FLOAT16_expanded",
    "test_castlike_UINT2_to_FLOAT_expanded",
    "test_castlike_UINT2_to_UINT8_expanded",
    "test_castlike_UINT4_to_FLOAT16_expanded",
    "test_castlike_UINT4_to_FLOAT_expanded",
    "test_castlike_UINT4_to_UINT8_expanded",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ_expanded",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FN_expanded",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ_expanded",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2_expanded",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ_expanded",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FN_expanded",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ_expanded",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2_expanded",
]

# the data is not float32 (integer, float16 or float64 variants of claimed ops)
_DATA = [
    "test_add_int16",
    "test_add_int8",
    "test_add_uint16",
    "test_add_uint32",
    "test_add_uint64",
    "test_add_uint8",
    "test_clip_default_int8_inbounds",
    "test_clip_default_int8_inbounds_expanded",
    "test_clip_default_int8_max",
    "test_clip_default_int8_min",
    "test_div_int16",
    "test_div_int32_trunc",
    "test_div_int8",
    "test_div_uint16",
    "test_div_uint32",
    "test_div_uint64",
    "test_div_uint8",
    "test_edge_pad",
    "test_flexattention_double_expanded_ver26",
    "test_flexattention_fp16_expanded_ver26",
    "test_max_float16",
    "test_max_float64",
    "test_max_int16",
    "test_max_int32",
    "test_max_int64",
    "test_max_int8",
    "test_max_uint16",
    "test_max_uint32",
    "test_max_uint64",
    "test_max_uint8",
    "test_maxpool_2d_uint8",
    "test_min_float16",
    "test_min_float64",
    "test_min_int16",
    "test_min_int32",
    "test_min_int64",
    "test_min_int8",
    "test_min_uint16",
    "test_min_uint32",
    "test_min_uint64",
    "test_min_uint8",
    "test_mul_int16",
    "test_mul_int8",
    "test_mul_uint16",
    "test_mul_uint32",
    "test_mul_uint64",
    "test_mul_uint8",
    "test_pow_types_int32_float32",
    "test_pow_types_int64_float32",
    "test_reflect_pad",
    "test_sub_int16",
    "test_sub_int8",
    "test_sub_uint16",
    "test_sub_uint32",
    "test_sub_uint64",
    "test_sub_uint8",
    "test_where_long_example",
    "test_wrap_pad",
]


EXCLUDED: dict[str, str] = {
    **dict.fromkeys(_CAST, "Cast to or from a type other than float32: convc compiles float32 tensors only"),
    **dict.fromkeys(_DATA, "integer/float16/float64 variant: convc compiles float32 tensors only (this case would "
                           "only fold at import)"),
    # quantized types and layouts convc refuses with UnsupportedOpError (tests/int8 checks the message); the
    # uint8/int8, per-tensor and per-channel cases run
    **dict.fromkeys([f"test_{op}_{t}" for op in ("quantizelinear", "dequantizelinear")
                     for t in ("int16", "uint16", "int4", "uint4", "int2", "uint2", "e4m3fn", "e5m2", "float4e2m1")]
                    + ["test_dequantizelinear_e4m3fn_float16", "test_dequantizelinear_e4m3fn_zero_point"],
                    "int16, 4-bit, 2-bit and float8 quantization: convc computes with uint8/int8 tensors"),
    **dict.fromkeys(["test_quantizelinear_blocked_asymmetric", "test_quantizelinear_blocked_symmetric",
                     "test_dequantizelinear_blocked"],
                    "block quantization: convc quantizes per tensor or per channel"),
    **dict.fromkeys([f"test_qlinearmatmul_{d}_{t}_float16" for d in ("2D", "3D") for t in ("uint8", "int8")],
                    "float16 scales: convc takes float32 scales"),
    **dict.fromkeys(["test_dynamicquantizelinear_expanded", "test_dynamicquantizelinear_max_adjusted_expanded",
                     "test_dynamicquantizelinear_min_adjusted_expanded"],
                    "dynamic quantization (scale and zero point computed at run time): convc needs constant scales"),
    # training-mode forms of ops convc imports for inference
    **dict.fromkeys([
        "test_batchnorm_epsilon_training_mode",
        "test_batchnorm_example_training_mode",
        "test_training_dropout",
        "test_training_dropout_default",
        "test_training_dropout_default_mask",
        "test_training_dropout_mask",
        "test_training_dropout_zero_ratio",
        "test_training_dropout_zero_ratio_mask",
    ], "training mode (batch statistics, random dropout): convc imports these ops for inference"),
    # outputs and input types convc does not produce or take
    "test_maxpool_with_argmax_2d_precomputed_pads": "the Indices output of MaxPool (convc computes the pooled values)",
    "test_maxpool_with_argmax_2d_precomputed_strides": "the Indices output of MaxPool (convc computes the pooled values)",
    "test_constantofshape_int_zeros": "an int32 constant: convc compiles float32 tensors only (this case would only "
                                      "fold at import)",
    "test_constantofshape_int_shape_zero": "an empty int32 constant: convc compiles float32 tensors only",
    "test_identity_opt": "an optional-typed input: convc compiles tensors",
    "test_identity_sequence": "a sequence-typed input: convc compiles tensors",
    # zero-size tensors: convc's memory planner and kernels need at least one element
    "test_slice_start_out_of_bounds": "an empty (zero-size) output: convc does not compile zero-size tensors",
    "test_split_zero_size_splits_opset13": "an empty (zero-size) output: convc does not compile zero-size tensors",
    "test_split_zero_size_splits_opset18": "an empty (zero-size) output: convc does not compile zero-size tensors",
    "test_rotary_embedding_no_position_ids_expanded": "splits off an empty (zero-size) tensor: convc does not compile "
                                                      "zero-size tensors",
    "test_rotary_embedding_no_position_ids_interleaved_expanded": "splits off an empty (zero-size) tensor: convc does "
                                                                  "not compile zero-size tensors",
    **dict.fromkeys([
        "test_rotary_embedding_3d_input_expanded",
        "test_rotary_embedding_expanded",
        "test_rotary_embedding_interleaved_expanded",
    ], "splits off an empty (zero-size) tensor (split=[8, 0]: the rotary dimension is the whole head): convc does "
       "not compile zero-size tensors"),
    # pytorch-operator models fed float64 or int64 data
    **dict.fromkeys([
        "test_operator_add_broadcast",
        "test_operator_add_size1_broadcast",
        "test_operator_add_size1_right_broadcast",
        "test_operator_add_size1_singleton_broadcast",
        "test_operator_addconstant",
        "test_operator_non_float_params",
    ], "float64/int64 data: convc compiles float32 tensors only (this case would only fold at import)"),
    # an Embedding's int64 indices (compiled in as constants) into its constant weight: Gather folds at import
    **dict.fromkeys(["test_Embedding", "test_Embedding_sparse"],
                    "int64 indices into a constant weight: convc compiles float32 tensors only (this case would only "
                    "fold at import)"),
}
