/* Winograd's F(4x4, 3x3) on channels-last float32 maps: the tile transforms and the 36
 * matrix products between them.
 *
 * Built by singleshot/winograd/build.py with the machine's C compiler and called
 * through ctypes. Every loop over channels is contiguous in memory so that the
 * compiler vectorises it; the products are register-blocked with GCC's vector
 * extensions, as wide as the CPU's vectors (-march=native).
 *
 * Tiles: the output map (H, W) is cut into 4x4 tiles, tile t of image n at tile row
 * ty and column tx covers outputs (4 ty .. 4 ty + 3, 4 tx .. 4 tx + 3) and reads the
 * 6x6 input window starting at (4 ty - 1, 4 tx - 1); pixels outside the map are the
 * convolution's zero padding. Tiles are numbered t = (n * tiles_h + ty) * tiles_w + tx.
 *
 * A call handles tiles [first, last) of a chunk that starts at tile `base` and holds
 * `count` tiles: the transformed values of tile t at position p (0..35, row-major in
 * the 6x6 tile) live at chunk[p * count * channels + (t - base) * channels + c], i.e.
 * the chunk is a (36, count, channels) array, ready for a batched matrix product.
 *
 * Threads: built with OpenMP (build.py does so when PyTorch runs on GNU OpenMP, and links
 * the same libgomp), a call splits its work between `threads` threads of PyTorch's own
 * OpenMP pool: helper threads of another pool would compete for the cores with that pool's
 * threads, which spin for a while after each parallel region waiting for more work. The
 * whole-convolution calls (winograd_convolution, winograd_convolution_blocks) run all three
 * steps in one parallel region. Without OpenMP a call runs on its caller's thread and the
 * caller splits the tiles or positions between Python threads.
 */
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef _OPENMP
#define PARALLEL_OVER_TILES _Pragma("omp parallel for num_threads(threads) schedule(static)")
#define PARALLEL_OVER_PANELS _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")
#define PARALLEL_REGION _Pragma("omp parallel num_threads(threads)")
#define SHARE_TILES _Pragma("omp for schedule(static)")
#define SHARE_PANELS _Pragma("omp for collapse(2) schedule(static)")
#define THREAD_NUMBER omp_get_thread_num()
#else
#define THREAD_NUMBER 0
#define PARALLEL_OVER_TILES
#define PARALLEL_OVER_PANELS
#define PARALLEL_REGION
#define SHARE_TILES
#define SHARE_PANELS
#endif

/* 1 when built with OpenMP (the transforms split their tiles between threads), else 0. */
int winograd_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define BLOCK 64 /* channels handled together: 36 rows of 64 floats stay in L1 */

/* r = B^T z for a 6-vector z whose elements are arrays of n channels (F(4x4, 3x3)'s
 * input transform, interpolation points 0, 1, -1, 2, -2 and infinity). */
static inline void input_rows(const float *restrict z0, const float *restrict z1, const float *restrict z2,
                              const float *restrict z3, const float *restrict z4, const float *restrict z5,
                              float *restrict r0, float *restrict r1, float *restrict r2,
                              float *restrict r3, float *restrict r4, float *restrict r5, int n) {
    for (int c = 0; c < n; c++) {
        float a = z4[c] - 4.0f * z2[c], b = z3[c] - 4.0f * z1[c];
        float e = z4[c] - z2[c], f = 2.0f * (z3[c] - z1[c]);
        r0[c] = 4.0f * z0[c] - 5.0f * z2[c] + z4[c];
        r1[c] = a + b;
        r2[c] = a - b;
        r3[c] = e + f;
        r4[c] = e - f;
        r5[c] = 4.0f * z1[c] - 5.0f * z3[c] + z5[c];
    }
}

/* o = A^T m for a 6-vector m of n-channel arrays (the output transform). */
static inline void output_rows(const float *restrict m0, const float *restrict m1, const float *restrict m2,
                               const float *restrict m3, const float *restrict m4, const float *restrict m5,
                               float *restrict o0, float *restrict o1, float *restrict o2, float *restrict o3,
                               int n) {
    for (int k = 0; k < n; k++) {
        float a = m1[k] + m2[k], b = m1[k] - m2[k], e = m3[k] + m4[k], f = m3[k] - m4[k];
        o0[k] = m0[k] + a + e;
        o1[k] = b + 2.0f * f;
        o2[k] = a + 4.0f * e;
        o3[k] = b + 8.0f * f + m5[k];
    }
}

/* One tile's block of n channels: gather the 6x6 window (zeros outside the map), then
 * v = B^T d B, written to the 36 planes of the chunk. Always inlined, and called with the
 * constant BLOCK for full blocks, so that the copies and loops have a fixed length. */
static inline __attribute__((always_inline)) void input_block(
    const float *restrict x, float *restrict out, long plane, long image, long y0, long x0, long c0,
    long height, long width, long channels, int n) {
    float d[6][6][BLOCK], t[6][6][BLOCK], v[6][6][BLOCK];
    for (int i = 0; i < 6; i++) {
        const long y = y0 + i;
        for (int j = 0; j < 6; j++) {
            const long xx = x0 + j;
            if (y >= 0 && y < height && xx >= 0 && xx < width)
                memcpy(d[i][j], x + ((image * height + y) * width + xx) * channels + c0, n * sizeof(float));
            else
                memset(d[i][j], 0, n * sizeof(float));
        }
    }
    for (int j = 0; j < 6; j++) /* columns: t[:, j] = B^T d[:, j] */
        input_rows(d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j],
                   t[0][j], t[1][j], t[2][j], t[3][j], t[4][j], t[5][j], n);
    for (int i = 0; i < 6; i++) /* rows: v[i, :] = t[i, :] B */
        input_rows(t[i][0], t[i][1], t[i][2], t[i][3], t[i][4], t[i][5],
                   v[i][0], v[i][1], v[i][2], v[i][3], v[i][4], v[i][5], n);
    for (int p = 0; p < 36; p++)
        memcpy(out + p * plane, v[p / 6][p % 6], n * sizeof(float));
}

/* One tile's input transform, all channels, into the chunk starting at tile `base`. */
static void input_tile(const float *restrict x, float *restrict chunk, long height, long width, long channels,
                       long tiles_h, long tiles_w, long tile, long base, long count) {
    const long plane = count * channels, per_image = tiles_h * tiles_w;
    const long image = tile / per_image, rest = tile % per_image;
    const long y0 = (rest / tiles_w) * 4 - 1, x0 = (rest % tiles_w) * 4 - 1;
    float *out = chunk + (tile - base) * channels;
    long c0 = 0;
    for (; c0 + BLOCK <= channels; c0 += BLOCK)
        input_block(x, out + c0, plane, image, y0, x0, c0, height, width, channels, BLOCK);
    if (c0 < channels)
        input_block(x, out + c0, plane, image, y0, x0, c0, height, width, channels, (int)(channels - c0));
}

/* x (images, height, width, channels) -> chunk (36, count, channels): V = B^T d B per tile,
 * for tiles [first, last), on `threads` OpenMP threads (ignored without OpenMP). */
void winograd_input_transform(const float *restrict x, float *restrict chunk, long height, long width,
                              long channels, long tiles_h, long tiles_w, long first, long last,
                              long base, long count, int threads) {
    PARALLEL_OVER_TILES
    for (long tile = first; tile < last; tile++)
        input_tile(x, chunk, height, width, channels, tiles_h, tiles_w, tile, base, count);
}

/* The side of a map of `size` after 2x2 max pooling with stride 2: POOL_FLOOR drops a last odd
 * row or column, POOL_CEIL keeps it as a window of one (Caffe's and SSD's pool3); NO_POOL: `size`. */
#define NO_POOL 0
#define POOL_FLOOR 1
#define POOL_CEIL 2
static inline long pooled_size(long size, int pool) {
    return pool == NO_POOL ? size : pool == POOL_CEIL ? (size + 1) / 2 : size / 2;
}

/* The larger of a and b as PyTorch's max pooling takes it: b replaces a only if greater or NaN. */
static inline void keep_larger(float *restrict a, const float *restrict b, int n) {
    for (int k = 0; k < n; k++)
        a[k] = (b[k] > a[k] || b[k] != b[k]) ? b[k] : a[k];
}

/* One tile's block of n channels: Y = A^T M A, plus bias, then ReLU, stored where inside the map;
 * or, with `pool`, each 2x2 window of the tile max-pooled (tiles start at even rows and columns,
 * so no window crosses two tiles) and stored in the pooled map. */
static inline __attribute__((always_inline)) void output_block(
    const float *restrict in, float *restrict y, const float *restrict bias, int relu, int pool, long plane,
    long image, long y0, long x0, long c0, long height, long width, long channels, int n) {
    float m[6][6][BLOCK], t[4][6][BLOCK], o[4][4][BLOCK];
    for (int p = 0; p < 36; p++)
        memcpy(m[p / 6][p % 6], in + p * plane, n * sizeof(float));
    for (int j = 0; j < 6; j++)
        output_rows(m[0][j], m[1][j], m[2][j], m[3][j], m[4][j], m[5][j], t[0][j], t[1][j], t[2][j], t[3][j], n);
    for (int i = 0; i < 4; i++)
        output_rows(t[i][0], t[i][1], t[i][2], t[i][3], t[i][4], t[i][5], o[i][0], o[i][1], o[i][2], o[i][3], n);
    const int rows = height - y0 < 4 ? (int)(height - y0) : 4, cols = width - x0 < 4 ? (int)(width - x0) : 4;
    for (int i = 0; i < rows; i++) {
        for (int j = 0; j < cols; j++) {
            float *value = o[i][j];
            if (bias)
                for (int k = 0; k < n; k++) value[k] += bias[c0 + k];
            if (relu)
                for (int k = 0; k < n; k++) value[k] = value[k] > 0.0f ? value[k] : 0.0f;
            if (pool == NO_POOL)
                memcpy(y + ((image * height + y0 + i) * width + x0 + j) * channels + c0, value,
                       n * sizeof(float));
        }
    }
    if (pool == NO_POOL)
        return;
    const long pooled_h = pooled_size(height, pool), pooled_w = pooled_size(width, pool);
    for (int i = 0; 2 * i < rows && y0 / 2 + i < pooled_h; i++) {
        for (int j = 0; 2 * j < cols && x0 / 2 + j < pooled_w; j++) {
            float *value = o[2 * i][2 * j]; /* the window's elements in row-major order, as PyTorch's */
            if (2 * j + 1 < cols)
                keep_larger(value, o[2 * i][2 * j + 1], n);
            if (2 * i + 1 < rows) {
                keep_larger(value, o[2 * i + 1][2 * j], n);
                if (2 * j + 1 < cols)
                    keep_larger(value, o[2 * i + 1][2 * j + 1], n);
            }
            memcpy(y + ((image * pooled_h + y0 / 2 + i) * pooled_w + x0 / 2 + j) * channels + c0, value,
                   n * sizeof(float));
        }
    }
}

/* One tile's output transform, all channels, from the chunk starting at tile `base`. */
static void output_tile(const float *restrict chunk, float *restrict y, const float *restrict bias, int relu,
                        int pool, long height, long width, long channels, long tiles_h, long tiles_w, long tile,
                        long base, long count) {
    const long plane = count * channels, per_image = tiles_h * tiles_w;
    const long image = tile / per_image, rest = tile % per_image;
    const long y0 = (rest / tiles_w) * 4, x0 = (rest % tiles_w) * 4;
    const float *in = chunk + (tile - base) * channels;
    long c0 = 0;
    for (; c0 + BLOCK <= channels; c0 += BLOCK)
        output_block(in + c0, y, bias, relu, pool, plane, image, y0, x0, c0, height, width, channels, BLOCK);
    if (c0 < channels)
        output_block(in + c0, y, bias, relu, pool, plane, image, y0, x0, c0, height, width, channels,
                     (int)(channels - c0));
}

/* chunk (36, count, channels) of products -> y (images, height, width, channels):
 * Y = A^T M A per tile, plus bias (may be NULL), then ReLU when relu != 0; outputs
 * beyond the map's bottom and right edges are dropped. With pool (POOL_FLOOR or POOL_CEIL)
 * y is the 2x2, stride-2 max-pooled map (images, pooled_size(height), pooled_size(width),
 * channels) instead. Threads as for the input transform. */
void winograd_output_transform(const float *restrict chunk, float *restrict y, const float *restrict bias,
                               int relu, int pool, long height, long width, long channels, long tiles_h,
                               long tiles_w, long first, long last, long base, long count, int threads) {
    PARALLEL_OVER_TILES
    for (long tile = first; tile < last; tile++)
        output_tile(chunk, y, bias, relu, pool, height, width, channels, tiles_h, tiles_w, tile, base, count);
}

/* The products: for each position p of the 6x6 tile, M_p (count, K) = V_p (count, C) U_p (C, K).
 *
 * The filters U_p are packed once (singleshot/winograd/conv.py, pack_filters) into panels of
 * PANEL output channels: panel j holds U_p[:, j PANEL .. j PANEL + w) as C rows of w floats
 * (w = PANEL, or fewer for the last panel), and starts PANEL j C floats into U_p. A register
 * block of ROWS tiles by PANEL channels then streams its panel row by row while the ROWS x 2
 * accumulator vectors stay in registers: 12 of the 16 (AVX2) or 32 (AVX-512) vector registers. */
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
#define PANEL (2 * LANES)
#define ROWS 6
typedef float lanes __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float))));

/* Output channels per packed panel on this build (the layout pack_filters must write). */
int winograd_panel_width(void) { return PANEL; }

#define FOUR(v) v, v, v, v
#if LANES == 16
#define SPLAT(v) FOUR(v), FOUR(v), FOUR(v), FOUR(v)
#elif LANES == 8
#define SPLAT(v) FOUR(v), FOUR(v)
#else
#define SPLAT(v) FOUR(v)
#endif
/* A vector of copies of one float (a literal, which compilers turn into one broadcast). */
static inline __attribute__((always_inline)) lanes broadcast(float value) { return (lanes){SPLAT(value)}; }

/* Row i's two accumulator vectors (named, so that they live in registers) and its update. */
#define ACCUMULATORS(i) lanes low##i = {0}, high##i = {0};
#define UPDATE(i)                                                  \
    if (rows > i) {                                                \
        const lanes ai = broadcast(a[i * lda + c]);                \
        low##i += ai * b0;                                         \
        high##i += ai * b1;                                        \
    }
#define STORE(i) \
    if (rows > i) store_row(out + i * ldo, low##i, high##i, width, accumulate);

/* out[0:width] (+)= the row's two vectors: all PANEL floats, or the first `width` of them. */
static inline __attribute__((always_inline)) void store_row(float *restrict out, lanes low, lanes high, int width,
                                                            int accumulate) {
    if (width == PANEL) {
        if (accumulate) {
            low += *(const lanes *)out;
            high += *(const lanes *)(out + LANES);
        }
        *(lanes *)out = low;
        *(lanes *)(out + LANES) = high;
        return;
    }
    float row[PANEL];
    *(lanes *)row = low;
    *(lanes *)(row + LANES) = high;
    for (int k = 0; k < width; k++) out[k] = accumulate ? out[k] + row[k] : row[k];
}

/* out[i, 0:width] (+)= sum_c a[i, c] b[c, :] for i < rows (<= ROWS): a's rows lda floats apart,
 * b `depth` rows of PANEL floats, out's rows ldo floats apart; adds to out when `accumulate`.
 * Inlined with a constant row count, so that the accumulators stay in registers. */
static inline __attribute__((always_inline)) void block_product(
    const float *restrict a, long lda, const float *restrict b, long depth, float *restrict out, long ldo,
    int rows, int width, int accumulate) {
    ACCUMULATORS(0) ACCUMULATORS(1) ACCUMULATORS(2) ACCUMULATORS(3) ACCUMULATORS(4) ACCUMULATORS(5)
    for (long c = 0; c < depth; c++) {
        const lanes b0 = *(const lanes *)(b + c * PANEL), b1 = *(const lanes *)(b + c * PANEL + LANES);
        UPDATE(0) UPDATE(1) UPDATE(2) UPDATE(3) UPDATE(4) UPDATE(5)
    }
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
}

/* One panel's products for all `count` tiles, DEPTH channels at a time (the panel's DEPTH rows,
 * 16 KB with AVX-512, stay in L1 while every tile uses them; the partial sums also round
 * better than one long sum): ROWS tiles at a time, then the remaining rows. A narrower last
 * panel (`width` < PANEL) is first copied into PANEL-wide rows padded with zeros.
 *
 * With `prefetch`, each ROWS-tile block also asks for its share of the next DEPTH rows of the
 * filters (the rest of this panel, then the next panel, which follows it in memory) to be
 * brought into L2, so that they arrive while these rows serve the tiles: filters too large for
 * the caches (36 x 512 x 512 floats, 37.7 MB) otherwise stall the first block of every DEPTH
 * rows. Only for the shared chunks: the per-thread blocks run layers whose filters stay cached. */
#define DEPTH 128
#define LINE 64
static inline __attribute__((always_inline)) void panel_products(
    const float *restrict a, const float *restrict b, int width, long channels, float *restrict out, long ldo,
    long count, int prefetch) {
    float padded[DEPTH * PANEL];
    for (long c0 = 0; c0 < channels; c0 += DEPTH) {
        const long depth = channels - c0 < DEPTH ? channels - c0 : DEPTH;
        const float *ac = a + c0, *bc = b + c0 * width;
        const int more = c0 > 0;
        if (width < PANEL) {
            memset(padded, 0, sizeof(padded));
            for (long c = 0; c < depth; c++) memcpy(padded + c * PANEL, bc + c * width, width * sizeof(float));
            bc = padded;
        }
        const char *next = (const char *)(b + (c0 + depth) * width);
        const long lines = prefetch ? (long)(DEPTH * PANEL * sizeof(float) / LINE) : 0;
        const long share = (lines + count / ROWS) / (count / ROWS + 1);
        long t = 0, fetched = 0;
        for (; t + ROWS <= count; t += ROWS) {
            for (long end = fetched + share; fetched < end && fetched < lines; fetched++)
                __builtin_prefetch(next + fetched * LINE, 0, 2);
            if (width == PANEL)
                block_product(ac + t * channels, channels, bc, depth, out + t * ldo, ldo, ROWS, PANEL, more);
            else
                block_product(ac + t * channels, channels, bc, depth, out + t * ldo, ldo, ROWS, width, more);
        }
        for (; fetched < lines; fetched++)
            __builtin_prefetch(next + fetched * LINE, 0, 2);
        const float *at = ac + t * channels;
        float *ot = out + t * ldo;
        switch (count - t) { /* constant row counts again */
        case 1: block_product(at, channels, bc, depth, ot, ldo, 1, width, more); break;
        case 2: block_product(at, channels, bc, depth, ot, ldo, 2, width, more); break;
        case 3: block_product(at, channels, bc, depth, ot, ldo, 3, width, more); break;
        case 4: block_product(at, channels, bc, depth, ot, ldo, 4, width, more); break;
        case 5: block_product(at, channels, bc, depth, ot, ldo, 5, width, more); break;
        default: break;
        }
    }
}

static void position_panel_products(const float *restrict chunk, const float *restrict filters,
                                    float *restrict products, long count, long channels, long out_channels,
                                    long p, long j, int prefetch) {
    const long k0 = j * PANEL;
    const int width = (int)(out_channels - k0 < PANEL ? out_channels - k0 : PANEL);
    const float *a = chunk + p * count * channels, *b = filters + (p * out_channels + k0) * channels;
    float *out = products + p * count * out_channels + k0;
    if (prefetch)
        panel_products(a, b, width, channels, out, out_channels, count, 1);
    else
        panel_products(a, b, width, channels, out, out_channels, count, 0);
}

void winograd_products(const float *restrict chunk, const float *restrict filters, float *restrict products,
                       long count, long channels, long out_channels, long first, long last, int threads) {
    const long panels = (out_channels + PANEL - 1) / PANEL;
    PARALLEL_OVER_PANELS
    for (long p = first; p < last; p++)
        for (long j = 0; j < panels; j++)
            position_panel_products(chunk, filters, products, count, channels, out_channels, p, j, 1);
}

/* The whole convolution, chunk after chunk of `chunk` tiles, in one parallel region of
 * `threads` OpenMP threads (serial without OpenMP): input transform, products and output
 * transform of each chunk, each step split between the threads. `transformed` and `products`
 * hold one chunk: (36, chunk, channels) and (36, chunk, out_channels) floats. Shapes, and y
 * with `pool`, as above. */
void winograd_convolution(const float *restrict x, const float *restrict filters, const float *restrict bias,
                          int relu, int pool, float *restrict y, float *restrict transformed,
                          float *restrict products, long images, long height, long width, long channels,
                          long out_channels, long chunk, int threads) {
    const long tiles_h = (height + 3) / 4, tiles_w = (width + 3) / 4, total = images * tiles_h * tiles_w;
    const long panels = (out_channels + PANEL - 1) / PANEL;
    (void)threads;
    PARALLEL_REGION
    for (long base = 0; base < total; base += chunk) {
        const long count = total - base < chunk ? total - base : chunk;
        SHARE_TILES
        for (long tile = base; tile < base + count; tile++)
            input_tile(x, transformed, height, width, channels, tiles_h, tiles_w, tile, base, count);
        SHARE_PANELS
        for (long p = 0; p < 36; p++)
            for (long j = 0; j < panels; j++)
                position_panel_products(transformed, filters, products, count, channels, out_channels, p, j, 1);
        SHARE_TILES
        for (long tile = base; tile < base + count; tile++)
            output_tile(products, y, bias, relu, pool, height, width, out_channels, tiles_h, tiles_w, tile, base,
                        count);
    }
}

/* The whole convolution with each thread taking its own blocks of `block` tiles through all
 * three steps, in its own part of `scratch` (per thread (36, block, channels) transformed
 * inputs, then (36, block, out_channels) products: small enough to stay in the core's own
 * cache, where the shared chunks of winograd_convolution go through the shared cache). For
 * layers whose filters are small enough to stay in that cache too. Shapes, and y with `pool`,
 * as above. */
void winograd_convolution_blocks(const float *restrict x, const float *restrict filters, const float *restrict bias,
                                 int relu, int pool, float *restrict y, float *restrict scratch, long images,
                                 long height, long width, long channels, long out_channels, long block,
                                 int threads) {
    const long tiles_h = (height + 3) / 4, tiles_w = (width + 3) / 4, total = images * tiles_h * tiles_w;
    const long panels = (out_channels + PANEL - 1) / PANEL, blocks = (total + block - 1) / block;
    (void)threads;
    PARALLEL_REGION
    {
        float *transformed = scratch + THREAD_NUMBER * 36 * block * (channels + out_channels);
        float *products = transformed + 36 * block * channels;
        SHARE_TILES
        for (long b = 0; b < blocks; b++) {
            const long base = b * block, count = total - base < block ? total - base : block;
            for (long tile = base; tile < base + count; tile++)
                input_tile(x, transformed, height, width, channels, tiles_h, tiles_w, tile, base, count);
            for (long p = 0; p < 36; p++)
                for (long j = 0; j < panels; j++)
                    position_panel_products(transformed, filters, products, count, channels, out_channels, p, j,
                                            0);
            for (long tile = base; tile < base + count; tile++)
                output_tile(products, y, bias, relu, pool, height, width, out_channels, tiles_h, tiles_w, tile,
                            base, count);
        }
    }
}
