/* Tile transforms of Winograd's F(4x4, 3x3) on channels-last float32 maps.
 *
 * Built by singleshot/winograd/build.py with the machine's C compiler and called
 * through ctypes; the matrix products between the two transforms run in PyTorch
 * (torch.bmm). Every loop over channels is contiguous in memory so that the
 * compiler vectorises it.
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
 * the same libgomp), a call splits its tiles between `threads` threads of PyTorch's own
 * OpenMP pool, the threads that run the matrix products in between. Helper threads of
 * another pool would compete for the cores with that pool's threads, which spin for a
 * while after each product waiting for more work. Without OpenMP a call runs on its
 * caller's thread and the caller splits the tiles.
 */
#include <string.h>

#ifdef _OPENMP
#define PARALLEL_OVER_TILES _Pragma("omp parallel for num_threads(threads) schedule(static)")
#else
#define PARALLEL_OVER_TILES
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

/* x (images, height, width, channels) -> chunk (36, count, channels): V = B^T d B per tile,
 * for tiles [first, last), on `threads` OpenMP threads (ignored without OpenMP). */
void winograd_input_transform(const float *restrict x, float *restrict chunk, long height, long width,
                              long channels, long tiles_h, long tiles_w, long first, long last,
                              long base, long count, int threads) {
    const long plane = count * channels, per_image = tiles_h * tiles_w;
    PARALLEL_OVER_TILES
    for (long tile = first; tile < last; tile++) {
        const long image = tile / per_image, rest = tile % per_image;
        const long y0 = (rest / tiles_w) * 4 - 1, x0 = (rest % tiles_w) * 4 - 1;
        float *out = chunk + (tile - base) * channels;
        long c0 = 0;
        for (; c0 + BLOCK <= channels; c0 += BLOCK)
            input_block(x, out + c0, plane, image, y0, x0, c0, height, width, channels, BLOCK);
        if (c0 < channels)
            input_block(x, out + c0, plane, image, y0, x0, c0, height, width, channels, (int)(channels - c0));
    }
}

/* One tile's block of n channels: Y = A^T M A, plus bias, then ReLU, stored where inside the map. */
static inline __attribute__((always_inline)) void output_block(
    const float *restrict in, float *restrict y, const float *restrict bias, int relu, long plane,
    long image, long y0, long x0, long c0, long height, long width, long channels, int n) {
    float m[6][6][BLOCK], t[4][6][BLOCK], o[4][4][BLOCK];
    for (int p = 0; p < 36; p++)
        memcpy(m[p / 6][p % 6], in + p * plane, n * sizeof(float));
    for (int j = 0; j < 6; j++)
        output_rows(m[0][j], m[1][j], m[2][j], m[3][j], m[4][j], m[5][j], t[0][j], t[1][j], t[2][j], t[3][j], n);
    for (int i = 0; i < 4; i++)
        output_rows(t[i][0], t[i][1], t[i][2], t[i][3], t[i][4], t[i][5], o[i][0], o[i][1], o[i][2], o[i][3], n);
    for (int i = 0; i < 4 && y0 + i < height; i++) {
        for (int j = 0; j < 4 && x0 + j < width; j++) {
            float *out = y + ((image * height + y0 + i) * width + x0 + j) * channels + c0;
            float *value = o[i][j];
            if (bias)
                for (int k = 0; k < n; k++) value[k] += bias[c0 + k];
            if (relu)
                for (int k = 0; k < n; k++) value[k] = value[k] > 0.0f ? value[k] : 0.0f;
            memcpy(out, value, n * sizeof(float));
        }
    }
}

/* chunk (36, count, channels) of products -> y (images, height, width, channels):
 * Y = A^T M A per tile, plus bias (may be NULL), then ReLU when relu != 0; outputs
 * beyond the map's bottom and right edges are dropped. Threads as for the input transform. */
void winograd_output_transform(const float *restrict chunk, float *restrict y, const float *restrict bias,
                               int relu, long height, long width, long channels, long tiles_h,
                               long tiles_w, long first, long last, long base, long count, int threads) {
    const long plane = count * channels, per_image = tiles_h * tiles_w;
    PARALLEL_OVER_TILES
    for (long tile = first; tile < last; tile++) {
        const long image = tile / per_image, rest = tile % per_image;
        const long y0 = (rest / tiles_w) * 4, x0 = (rest % tiles_w) * 4;
        const float *in = chunk + (tile - base) * channels;
        long c0 = 0;
        for (; c0 + BLOCK <= channels; c0 += BLOCK)
            output_block(in + c0, y, bias, relu, plane, image, y0, x0, c0, height, width, channels, BLOCK);
        if (c0 < channels)
            output_block(in + c0, y, bias, relu, plane, image, y0, x0, c0, height, width, channels,
                         (int)(channels - c0));
    }
}
