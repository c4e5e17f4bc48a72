/* Legend (every kernel header): V states (token ids 0..V-1, V = MASK), L sequence length,
 * d per-position width, D = L*d stream width, m hidden width, K blocks (stream layers
 * z_0..z_K), B batch (sequences), N rows and C columns of a row pass; analysis: n samples,
 * f features, n_layers representations ("layers" is never L). */

/* The residual MLP on the concatenated stream, llm.c style: one float32 parameter arena laid
 * out by one table (mlp.c's LAYOUT: name, shape, fan-in, init kind of every tensor), gradient
 * and AdamW arenas of the same layout, one activation workspace per batch size, and a forward
 * and a backward that chain the layers of layers.h, each run on the pool as tasks.h cuts it.
 *
 *   z_0[b, p, :] = tok_emb[x[b, p]] + pos_emb[p]                   (B, L, d) = (B, D)
 *   block k:     z <- z + fc2(gelu(fc1(LN_k(z))))                   LN_k omitted if !block_ln
 *   y = LN_f(z_K) viewed as (B*L, d);  logits = y unembed^T + bias  (B*L, V)
 *   loss = mean over masked positions of -log softmax(logits)[target]
 *
 * All matrices are row-major; Linear weights are PyTorch's (out, in).  Every function returns
 * an RG_* status or nothing; none allocates memory: all scratch (activations, gradient
 * buffers, the training batch) lives in the caller's workspace.
 *
 * The model functions run on a thread pool (pool.h; NULL: the calling thread) and give the
 * same bits for any number of threads: every layer is cut into items by its shapes alone
 * (tasks.h), each item computed single-threaded in a fixed order. */
#ifndef RG_MLP_H
#define RG_MLP_H

#include <stdint.h>

#include "pool.h"

typedef struct {
    int64_t V;      /* states; token ids lie in [0, V], V being the MASK id */
    int64_t L;      /* sequence length */
    int64_t d;      /* per-position width */
    int64_t m;      /* hidden width */
    int64_t K;      /* depth (number of blocks) */
    int block_ln;   /* 1: pre-LayerNorm blocks; 0: blocks without LN (no ln params) */
} rg_mlp_config;

/* Largest matrix dimension (V+1, D = L*d, m, B*L): CBLAS takes 32-bit ints.  Element counts
 * and offsets are int64 and checked against 2^60. */
#define RG_MLP_MAX_DIM 2147483647LL

/* RG_ERR_VALUE if a size is < 1 (V < 2) or a derived size overflows; else fills *n_params. */
int rg_mlp_check_config(const rg_mlp_config *c, int64_t *n_params);

/* ---- the layout: one table, read by the sizes, the pointers, the init and Python -------- */

/* How a tensor is initialised (PyTorch's defaults for the module it belongs to). */
typedef enum {
    RG_INIT_NORMAL,   /* N(0, 1): nn.Embedding */
    RG_INIT_UNIFORM,  /* U(-1/sqrt(fan_in), 1/sqrt(fan_in)): nn.Linear weight and bias */
    RG_INIT_ONES,     /* nn.LayerNorm weight */
    RG_INIT_ZEROS     /* nn.LayerNorm bias */
} rg_init_kind;

/* One tensor of the arena, in state_dict order. */
typedef struct {
    char name[48];          /* PyTorch state_dict name, e.g. "blocks.3.fc1.weight" */
    int ndim;               /* 1 or 2 */
    int64_t shape[2];
    int64_t offset, size;   /* floats, within the arena */
    int64_t fan_in;         /* of RG_INIT_UNIFORM (1 for the other kinds) */
    rg_init_kind init;
} rg_mlp_tensor;

/* Number of tensors: 2 + K*(6 or 4) + 4. */
int64_t rg_mlp_n_tensors(const rg_mlp_config *c);
/* Tensor i, 0 <= i < rg_mlp_n_tensors (c checked by rg_mlp_check_config). */
void rg_mlp_tensor_at(const rg_mlp_config *c, int64_t i, rg_mlp_tensor *t);

/* The tensors of a parameter-shaped arena (params, grads, AdamW m or v) by role. */
typedef struct {
    float *ln_w, *ln_b;  /* (D) each, NULL without block_ln */
    float *fc1_w;        /* (m, D) */
    float *fc1_b;        /* (m) */
    float *fc2_w;        /* (D, m) */
    float *fc2_b;        /* (D) */
} rg_mlp_block;

typedef struct {
    float *tok_emb;      /* (V+1, d) */
    float *pos_emb;      /* (L, d) */
    float *blocks;       /* K blocks of block_stride floats: rg_mlp_block_of */
    int64_t block_stride;
    float *lnf_w;        /* (D) */
    float *lnf_b;        /* (D) */
    float *unemb_w;      /* (V, d) */
    float *unemb_b;      /* (V) */
} rg_mlp_params;

void rg_mlp_params_of(const rg_mlp_config *c, float *arena, rg_mlp_params *p);
rg_mlp_block rg_mlp_block_of(const rg_mlp_config *c, const rg_mlp_params *p, int64_t k);

/* Reproducible initialisation: tensor i draws from Philox stream (seed, RG_DOMAIN_INIT, i),
 * as its init kind says.  params: (n_params). */
void rg_mlp_init(const rg_mlp_config *c, float *params, uint64_t seed);

/* ---- workspace, forward, backward --------------------------------------------------------- */

/* The activations and scratch of one batch (carved from the caller's workspace). */
typedef struct {
    float *z;        /* (K+1, B, D) residual stream z_0..z_K */
    float *xn;       /* (K, B, D) LN_k(z_k) (block_ln only) */
    float *ln_mean;  /* (K, B) */
    float *ln_rstd;  /* (K, B) */
    float *pre;      /* (K, B, m) fc1 output, then gelu' of fc1 output + bias */
    float *h;        /* (K, B, m) GELU output */
    float *y;        /* (B, D) LN_f(z_K) */
    float *f_mean;   /* (B) */
    float *f_rstd;   /* (B) */
    float *logits;   /* (B*L, V) logits, then probabilities, then dlogits */
    float *dz;       /* (B, D) running gradient of the stream */
    float *dx;       /* (B, D) gradient of an LN output */
    float *dh;       /* (B, m) gradient of h, then of pre (in place) */
    int32_t *tokens; /* (B, L) training targets */
    int32_t *masked; /* (B, L) training inputs */
    uint8_t *mask;   /* (B, L) */
} rg_mlp_acts;

/* Bytes of workspace for batches of up to B sequences; -1 if it overflows. */
int64_t rg_mlp_workspace_bytes(const rg_mlp_config *c, int64_t B);
/* The buffers of a workspace ws of rg_mlp_workspace_bytes(c, B) bytes; RG_ERR_VALUE if the
 * sizes overflow. */
int rg_mlp_acts_of(const rg_mlp_config *c, int64_t B, void *ws, rg_mlp_acts *a);

/* Forward of B sequences x (B, L) with ids in [0, V].  Optional outputs (NULL to skip):
 * logits (B, L, V) raw logits; stream: z_k (B, L, d) written to stream + k * stream_stride for
 * k = 0..K (floats between layers, >= B*D).  If targets (B, L) and mask (B, L) are given, the
 * cross-entropy sums go to *nll_sum, *count and the workspace is ready for rg_mlp_backward. */
int rg_mlp_forward(rg_pool *pool, const rg_mlp_config *c, const float *params, void *ws,
                   int64_t B, const int32_t *x, float *logits, float *stream,
                   int64_t stream_stride, const int32_t *targets, const uint8_t *mask,
                   double *nll_sum, int64_t *count);

/* Gradient of the mean masked CE; needs the preceding rg_mlp_forward on the same ws, x (B, L),
 * targets (B, L), mask (B, L), and its count (> 0).  grads (n_params) is overwritten entirely
 * (each gradient tensor is written once: no zeroing pass over the arena). */
int rg_mlp_backward(rg_pool *pool, const rg_mlp_config *c, const float *params, float *grads,
                    void *ws, int64_t B, const int32_t *x, const int32_t *targets,
                    const uint8_t *mask, int64_t count);

#endif
