"""Expected failures of the ONNX node suite (tests/test_onnx_node_suite.py), grouped by cause.

Each entry is ``case name: reason``; the suite marks them ``xfail(strict=True)``, so a case that
starts passing fails until its entry is removed: this list can only shrink. Draft a new one
with ``python tests/tools/update_expectations.py --write`` and review it by hand.
"""

from __future__ import annotations

EXPECTED_FAILURES: dict[str, str] = {
    # Data-dependent output shapes (graph break: the output shape depends on input values, which one jax.jit cannot express): 23 cases
    "test_compress_0": "data-dependent output shape: Compress",
    "test_compress_1": "data-dependent output shape: Compress",
    "test_compress_bfloat16": "data-dependent output shape: Compress",
    "test_compress_default_axis": "data-dependent output shape: Compress",
    "test_compress_negative_axis": "data-dependent output shape: Compress",
    "test_nonmaxsuppression_center_point_box_format": "data-dependent output shape: NonMaxSuppression",
    "test_nonmaxsuppression_flipped_coordinates": "data-dependent output shape: NonMaxSuppression",
    "test_nonmaxsuppression_identical_boxes": "data-dependent output shape: NonMaxSuppression",
    "test_nonmaxsuppression_iou_threshold_boundary": "data-dependent output shape: NonMaxSuppression",
    "test_nonmaxsuppression_limit_output_size": "data-dependent output shape: NonMaxSuppression",
    "test_nonmaxsuppression_single_box": "data-dependent output shape: NonMaxSuppression",
    "test_nonmaxsuppression_suppress_by_IOU": "data-dependent output shape: NonMaxSuppression",
    "test_nonmaxsuppression_suppress_by_IOU_and_scores": "data-dependent output shape: NonMaxSuppression",
    "test_nonmaxsuppression_two_batches": "data-dependent output shape: NonMaxSuppression",
    "test_nonmaxsuppression_two_classes": "data-dependent output shape: NonMaxSuppression",
    "test_nonzero_example": "data-dependent output shape: NonZero",
    "test_unique_bfloat16_sorted_without_axis": "data-dependent output shape: Unique",
    "test_unique_length_1": "data-dependent output shape: Unique",
    "test_unique_not_sorted_without_axis": "data-dependent output shape: Unique",
    "test_unique_sorted_with_axis": "data-dependent output shape: Unique",
    "test_unique_sorted_with_axis_3d": "data-dependent output shape: Unique",
    "test_unique_sorted_with_negative_axis": "data-dependent output shape: Unique",
    "test_unique_sorted_without_axis": "data-dependent output shape: Unique",
    # ConstantOfShape: shape input is runtime data (StaticValueError): 2 cases
    "test_affine_grid_3d_align_corners_expanded": "ConstantOfShape: shape input is runtime data (StaticValueError)",
    "test_affine_grid_3d_expanded": "ConstantOfShape: shape input is runtime data (StaticValueError)",
    # Dropout raises NotImplementedError: 6 cases
    "test_training_dropout": "Dropout raises NotImplementedError",
    "test_training_dropout_default": "Dropout raises NotImplementedError",
    "test_training_dropout_default_mask": "Dropout raises NotImplementedError",
    "test_training_dropout_mask": "Dropout raises NotImplementedError",
    "test_training_dropout_zero_ratio": "Dropout raises NotImplementedError",
    "test_training_dropout_zero_ratio_mask": "Dropout raises NotImplementedError",
    # Expand: shape input is runtime data (StaticValueError): 2 cases
    "test_affine_grid_2d_align_corners_expanded": "Expand: shape input is runtime data (StaticValueError)",
    "test_affine_grid_2d_expanded": "Expand: shape input is runtime data (StaticValueError)",
    # If raises NodeError: 1 case
    "test_if_opt": "If raises NodeError",
    # Loop raises NodeError: 1 case
    "test_loop11": "Loop raises NodeError",
    # Loop: shape input is runtime data (StaticValueError): 2 cases
    "test_loop13_seq": "Loop: shape input is runtime data (StaticValueError)",
    "test_loop16_seq_none": "Loop: shape input is runtime data (StaticValueError)",
    # ValueError outside the ops: 4 cases
    "test_sequence_map_add_2_sequences_expanded": "ValueError outside the ops",
    "test_sequence_map_extract_shapes_expanded": "ValueError outside the ops",
    "test_sequence_map_identity_1_sequence_1_tensor_expanded": "ValueError outside the ops",
    "test_sequence_map_identity_2_sequences_expanded": "ValueError outside the ops",
    # Not implemented yet: Adagrad: 2 cases
    "test_adagrad": "not implemented: Adagrad",
    "test_adagrad_multiple": "not implemented: Adagrad",
    # Not implemented yet: Adam: 2 cases
    "test_adam": "not implemented: Adam",
    "test_adam_multiple": "not implemented: Adam",
    # Not implemented yet: AffineGrid: 4 cases
    "test_affine_grid_2d": "not implemented: AffineGrid",
    "test_affine_grid_2d_align_corners": "not implemented: AffineGrid",
    "test_affine_grid_3d": "not implemented: AffineGrid",
    "test_affine_grid_3d_align_corners": "not implemented: AffineGrid",
    # Not implemented yet: ArrayFeatureExtractor: 1 case
    "test_ai_onnx_ml_array_feature_extractor": "not implemented: ArrayFeatureExtractor",
    # Not implemented yet: Bernoulli: 3 cases
    "test_bernoulli": "not implemented: Bernoulli",
    "test_bernoulli_double": "not implemented: Bernoulli",
    "test_bernoulli_seed": "not implemented: Bernoulli",
    # Not implemented yet: Binarizer: 1 case
    "test_ai_onnx_ml_binarizer": "not implemented: Binarizer",
    # Not implemented yet: CausalConvWithState: 13 cases
    "test_causal_conv_with_state_b1_c1_degenerate": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_basic": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_decode_step": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_fp16": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_kernel_size_one": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_short_input_no_past_state": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_silu": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_silu_fp16": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_silu_with_past_state": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_swish_alias": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_with_bias": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_with_bias_and_past_state": "not implemented: CausalConvWithState",
    "test_causal_conv_with_state_with_past_state": "not implemented: CausalConvWithState",
    # Not implemented yet: Col2Im: 5 cases
    "test_col2im": "not implemented: Col2Im",
    "test_col2im_5d": "not implemented: Col2Im",
    "test_col2im_dilations": "not implemented: Col2Im",
    "test_col2im_pads": "not implemented: Col2Im",
    "test_col2im_strides": "not implemented: Col2Im",
    # Not implemented yet: DeformConv: 4 cases
    "test_basic_deform_conv_with_padding": "not implemented: DeformConv",
    "test_basic_deform_conv_without_padding": "not implemented: DeformConv",
    "test_deform_conv_with_mask_bias": "not implemented: DeformConv",
    "test_deform_conv_with_multiple_offset_groups": "not implemented: DeformConv",
    # Not implemented yet: FlexAttention: 11 cases
    "test_flexattention": "not implemented: FlexAttention",
    "test_flexattention_causal_mask": "not implemented: FlexAttention",
    "test_flexattention_diff_head_sizes": "not implemented: FlexAttention",
    "test_flexattention_double": "not implemented: FlexAttention",
    "test_flexattention_fp16": "not implemented: FlexAttention",
    "test_flexattention_gqa": "not implemented: FlexAttention",
    "test_flexattention_prob_mod": "not implemented: FlexAttention",
    "test_flexattention_relative_positional": "not implemented: FlexAttention",
    "test_flexattention_scaled": "not implemented: FlexAttention",
    "test_flexattention_score_mod": "not implemented: FlexAttention",
    "test_flexattention_soft_cap": "not implemented: FlexAttention",
    # Not implemented yet: GridSample: 18 cases
    "test_gridsample": "not implemented: GridSample",
    "test_gridsample_aligncorners_true": "not implemented: GridSample",
    "test_gridsample_bicubic": "not implemented: GridSample",
    "test_gridsample_bicubic_align_corners_0_additional_1": "not implemented: GridSample",
    "test_gridsample_bicubic_align_corners_1_additional_1": "not implemented: GridSample",
    "test_gridsample_bilinear": "not implemented: GridSample",
    "test_gridsample_bilinear_align_corners_0_additional_1": "not implemented: GridSample",
    "test_gridsample_bilinear_align_corners_1_additional_1": "not implemented: GridSample",
    "test_gridsample_border_padding": "not implemented: GridSample",
    "test_gridsample_nearest": "not implemented: GridSample",
    "test_gridsample_nearest_align_corners_0_additional_1": "not implemented: GridSample",
    "test_gridsample_nearest_align_corners_1_additional_1": "not implemented: GridSample",
    "test_gridsample_reflection_padding": "not implemented: GridSample",
    "test_gridsample_volumetric_bilinear_align_corners_0": "not implemented: GridSample",
    "test_gridsample_volumetric_bilinear_align_corners_1": "not implemented: GridSample",
    "test_gridsample_volumetric_nearest_align_corners_0": "not implemented: GridSample",
    "test_gridsample_volumetric_nearest_align_corners_1": "not implemented: GridSample",
    "test_gridsample_zeros_padding": "not implemented: GridSample",
    # Not implemented yet: ImageDecoder: 9 cases
    "test_image_decoder_decode_bmp_rgb": "not implemented: ImageDecoder",
    "test_image_decoder_decode_jpeg2k_rgb": "not implemented: ImageDecoder",
    "test_image_decoder_decode_jpeg_bgr": "not implemented: ImageDecoder",
    "test_image_decoder_decode_jpeg_grayscale": "not implemented: ImageDecoder",
    "test_image_decoder_decode_jpeg_rgb": "not implemented: ImageDecoder",
    "test_image_decoder_decode_png_rgb": "not implemented: ImageDecoder",
    "test_image_decoder_decode_pnm_rgb": "not implemented: ImageDecoder",
    "test_image_decoder_decode_tiff_rgb": "not implemented: ImageDecoder",
    "test_image_decoder_decode_webp_rgb": "not implemented: ImageDecoder",
    # Not implemented yet: LabelEncoder: 4 cases
    "test_ai_onnx_ml_label_encoder_string_int": "not implemented: LabelEncoder",
    "test_ai_onnx_ml_label_encoder_string_int_no_default": "not implemented: LabelEncoder",
    "test_ai_onnx_ml_label_encoder_tensor_mapping": "not implemented: LabelEncoder",
    "test_ai_onnx_ml_label_encoder_tensor_value_only_mapping": "not implemented: LabelEncoder",
    # Not implemented yet: LinearAttention: 14 cases
    "test_linear_attention_decode_step": "not implemented: LinearAttention",
    "test_linear_attention_delta": "not implemented: LinearAttention",
    "test_linear_attention_explicit_scale": "not implemented: LinearAttention",
    "test_linear_attention_fp16": "not implemented: LinearAttention",
    "test_linear_attention_gated": "not implemented: LinearAttention",
    "test_linear_attention_gated_delta": "not implemented: LinearAttention",
    "test_linear_attention_gated_delta_beta_scalar": "not implemented: LinearAttention",
    "test_linear_attention_gated_delta_gqa": "not implemented: LinearAttention",
    "test_linear_attention_gated_delta_mqa": "not implemented: LinearAttention",
    "test_linear_attention_gated_per_head_decay": "not implemented: LinearAttention",
    "test_linear_attention_linear": "not implemented: LinearAttention",
    "test_linear_attention_linear_t1_no_past": "not implemented: LinearAttention",
    "test_linear_attention_no_past_explicit_zeros": "not implemented: LinearAttention",
    "test_linear_attention_prefill_with_past": "not implemented: LinearAttention",
    # Not implemented yet: MaxUnpool: 2 cases
    "test_maxunpool_export_with_output_shape": "not implemented: MaxUnpool",
    "test_maxunpool_export_without_output_shape": "not implemented: MaxUnpool",
    # Not implemented yet: Momentum: 3 cases
    "test_momentum": "not implemented: Momentum",
    "test_momentum_multiple": "not implemented: Momentum",
    "test_nesterov_momentum": "not implemented: Momentum",
    # Not implemented yet: RandomUniformLike: 3 cases
    "test_bernoulli_double_expanded": "not implemented: RandomUniformLike",
    "test_bernoulli_expanded": "not implemented: RandomUniformLike",
    "test_bernoulli_seed_expanded": "not implemented: RandomUniformLike",
    # Not implemented yet: RegexFullMatch: 3 cases
    "test_regex_full_match_basic": "not implemented: RegexFullMatch",
    "test_regex_full_match_email_domain": "not implemented: RegexFullMatch",
    "test_regex_full_match_empty": "not implemented: RegexFullMatch",
    # Not implemented yet: RoiAlign: 3 cases
    "test_roialign_aligned_false": "not implemented: RoiAlign",
    "test_roialign_aligned_true": "not implemented: RoiAlign",
    "test_roialign_mode_max": "not implemented: RoiAlign",
    # Not implemented yet: StringConcat: 5 cases
    "test_string_concat": "not implemented: StringConcat",
    "test_string_concat_broadcasting": "not implemented: StringConcat",
    "test_string_concat_empty_string": "not implemented: StringConcat",
    "test_string_concat_utf8": "not implemented: StringConcat",
    "test_string_concat_zero_dimensional": "not implemented: StringConcat",
    # Not implemented yet: StringNormalizer: 6 cases
    "test_strnormalizer_export_monday_casesensintive_lower": "not implemented: StringNormalizer",
    "test_strnormalizer_export_monday_casesensintive_nochangecase": "not implemented: StringNormalizer",
    "test_strnormalizer_export_monday_casesensintive_upper": "not implemented: StringNormalizer",
    "test_strnormalizer_export_monday_empty_output": "not implemented: StringNormalizer",
    "test_strnormalizer_export_monday_insensintive_upper_twodim": "not implemented: StringNormalizer",
    "test_strnormalizer_nostopwords_nochangecase": "not implemented: StringNormalizer",
    # Not implemented yet: StringSplit: 6 cases
    "test_string_split_basic": "not implemented: StringSplit",
    "test_string_split_consecutive_delimiters": "not implemented: StringSplit",
    "test_string_split_empty_string_delimiter": "not implemented: StringSplit",
    "test_string_split_empty_tensor": "not implemented: StringSplit",
    "test_string_split_maxsplit": "not implemented: StringSplit",
    "test_string_split_no_delimiter": "not implemented: StringSplit",
    # Not implemented yet: SwiGLU: 3 cases
    "test_swiglu": "not implemented: SwiGLU",
    "test_swiglu_alpha": "not implemented: SwiGLU",
    "test_swiglu_float16": "not implemented: SwiGLU",
    # Not implemented yet: TensorScatter: 3 cases
    "test_tensorscatter": "not implemented: TensorScatter",
    "test_tensorscatter_3d": "not implemented: TensorScatter",
    "test_tensorscatter_circular": "not implemented: TensorScatter",
    # Not implemented yet: TfIdfVectorizer: 7 cases
    "test_tfidfvectorizer_tf_batch_onlybigrams_skip0": "not implemented: TfIdfVectorizer",
    "test_tfidfvectorizer_tf_batch_onlybigrams_skip5": "not implemented: TfIdfVectorizer",
    "test_tfidfvectorizer_tf_batch_uniandbigrams_skip5": "not implemented: TfIdfVectorizer",
    "test_tfidfvectorizer_tf_only_bigrams_skip0": "not implemented: TfIdfVectorizer",
    "test_tfidfvectorizer_tf_onlybigrams_levelempty": "not implemented: TfIdfVectorizer",
    "test_tfidfvectorizer_tf_onlybigrams_skip5": "not implemented: TfIdfVectorizer",
    "test_tfidfvectorizer_tf_uniandbigrams_skip5": "not implemented: TfIdfVectorizer",
    # Not implemented yet: TreeEnsemble: 2 cases
    "test_ai_onnx_ml_tree_ensemble_set_membership": "not implemented: TreeEnsemble",
    "test_ai_onnx_ml_tree_ensemble_single_tree": "not implemented: TreeEnsemble",
}
