/* (Re)defines the real-type macros of a kernel template for FN_REAL = 32 or 64.
 * Included at the top of every fn_<family>_impl.h, which the ISA translation
 * units include once per FN_REAL; deliberately has no include guard. */
#undef FN_T
#undef FN_SUF
#undef FN_EXP
#undef FN_EXP_NEG
#undef FN_REDUCE_T
#undef FN_EXP_NEG_POLY
#undef FN_EXP_NEG_SCALE_T
#undef FN_EXPM1
#undef FN_EXPM1_NEG
#undef FN_LOG1P
#undef FN_LOG1P_UNIT
#undef FN_TANH
#undef FN_ERFC
#undef FN_SQRT
#undef FN_FABS
#undef FN_STREAM_COPY
#undef FN_CHUNK_COPY
#if FN_REAL == 32
#define FN_T float
#define FN_SUF f32
#define FN_EXP fn_expf
#define FN_EXP_NEG fn_exp_negf          /* exp on x <= 0 */
#define FN_REDUCE_T fn__reduce_tf   /* exp on x <= 0 in three steps (FN_ACT_SPLIT_EXP) */
#define FN_EXP_NEG_POLY fn__exp_neg_polyf
#define FN_EXP_NEG_SCALE_T fn__exp_neg_scale_tf
#define FN_EXPM1 fn_expm1f
#define FN_EXPM1_NEG fn_expm1_negf      /* expm1 on x <= 0 */
#define FN_LOG1P fn_log1pf
#define FN_LOG1P_UNIT fn_log1p_unitf     /* log1p on [0, 1] */
#define FN_TANH fn_tanhf
/* no FN_ERFC: float GELU uses fn_normal_tailf */
#define FN_SQRT sqrtf
#define FN_FABS fabsf
#define FN_STREAM_COPY fn_stream_copy_f32   /* fn_stream.h */
#define FN_CHUNK_COPY fn_chunk_copy_f32
#elif FN_REAL == 64
#define FN_T double
#define FN_SUF f64
#define FN_EXP fn_exp
#define FN_EXP_NEG fn_exp
#define FN_REDUCE_T fn__reduce_t
#define FN_EXP_NEG_POLY fn__exp_neg_poly
#define FN_EXP_NEG_SCALE_T fn__exp_neg_scale_t
#define FN_EXPM1 fn_expm1
#define FN_EXPM1_NEG fn_expm1
#define FN_LOG1P fn_log1p
#define FN_LOG1P_UNIT fn_log1p
#define FN_TANH fn_tanh
#define FN_ERFC fn_erfc
#define FN_SQRT sqrt
#define FN_FABS fabs
#define FN_STREAM_COPY fn_stream_copy_f64
#define FN_CHUNK_COPY fn_chunk_copy_f64
#else
#error "FN_REAL must be 32 or 64"
#endif
