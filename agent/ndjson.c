#include "agent/ndjson.h"

#include <inttypes.h>
#include <string.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* 12 bits of input -> 2 output characters; built once. */
static uint16_t b64_pairs[4096];
static int b64_ready;

static void b64_init(void)
{
    for (int i = 0; i < 4096; i++) {
        unsigned char p[2] = {(unsigned char)b64_alphabet[i >> 6],
                              (unsigned char)b64_alphabet[i & 63]};
        memcpy(&b64_pairs[i], p, 2);
    }
    b64_ready = 1;
}

size_t ndjson_b64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

/* Scalar encoder: whole 3-byte groups, then the padded tail. */
static void b64_encode_scalar(const unsigned char *in, size_t n, char *out)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        memcpy(out, &b64_pairs[v >> 12], 2);
        memcpy(out + 2, &b64_pairs[v & 0xfff], 2);
        out += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[0] = b64_alphabet[v >> 18];
        out[1] = b64_alphabet[(v >> 12) & 63];
        out[2] = '=';
        out[3] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[0] = b64_alphabet[v >> 18];
        out[1] = b64_alphabet[(v >> 12) & 63];
        out[2] = b64_alphabet[(v >> 6) & 63];
        out[3] = '=';
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NDJSON_HAVE_AVX2 1

/* AVX2 encoder: 24 input bytes -> 32 characters per step; returns the input bytes consumed
 * (a multiple of 3; the caller encodes the rest). Each 128-bit lane takes 12 input bytes. */
__attribute__((target("avx2"))) static size_t b64_encode_avx2(const unsigned char *in, size_t n,
                                                              char *out)
{
    /* per 3-byte group (a,b,c): bytes b,a,c,b, so that the 16-bit halves are a:b and b:c */
    const __m256i shuf = _mm256_setr_epi8(1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10, 1, 0,
                                          2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10);
    /* a>>2 (bits 10-15 of a:b) and (b&15)<<2|c>>6 (bits 6-11 of b:c), moved to bytes 0 and 2 */
    const __m256i mask_hi = _mm256_set1_epi32(0x0fc0fc00);
    const __m256i mul_hi = _mm256_set1_epi32(0x04000040);
    /* (a&3)<<4|b>>4 (bits 4-9 of a:b) and c&63 (bits 0-5 of b:c), moved to bytes 1 and 3 */
    const __m256i mask_lo = _mm256_set1_epi32(0x003f03f0);
    const __m256i mul_lo = _mm256_set1_epi32(0x01000010);
    /* 6-bit value -> ASCII offset, indexed by: 13 for 0-25, 0 for 26-51, 1..12 for 52-63 */
    const __m256i offsets =
        _mm256_setr_epi8(71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 65, 0, 0, 71, -4, -4,
                         -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 65, 0, 0);
    const __m256i c51 = _mm256_set1_epi8(51), c26 = _mm256_set1_epi8(26),
                  c13 = _mm256_set1_epi8(13);
    size_t i = 0;
    /* the second lane's 16-byte load reads up to in[i + 27] */
    for (; i + 28 <= n; i += 24, out += 32) {
        __m128i lo = _mm_loadu_si128((const __m128i *)(const void *)(in + i));
        __m128i hi = _mm_loadu_si128((const __m128i *)(const void *)(in + i + 12));
        __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        v = _mm256_shuffle_epi8(v, shuf);
        __m256i t0 = _mm256_mulhi_epu16(_mm256_and_si256(v, mask_hi), mul_hi);
        __m256i t1 = _mm256_mullo_epi16(_mm256_and_si256(v, mask_lo), mul_lo);
        __m256i idx6 = _mm256_or_si256(t0, t1);
        __m256i sel = _mm256_subs_epu8(idx6, c51);
        sel = _mm256_or_si256(sel, _mm256_and_si256(_mm256_cmpgt_epi8(c26, idx6), c13));
        __m256i chars = _mm256_add_epi8(idx6, _mm256_shuffle_epi8(offsets, sel));
        _mm256_storeu_si256((__m256i *)(void *)out, chars);
    }
    return i;
}

static int g_use_avx2 = -1;
#endif

void ndjson_b64_encode(const unsigned char *in, size_t n, char *out)
{
    if (!b64_ready)
        b64_init();
#ifdef NDJSON_HAVE_AVX2
    if (g_use_avx2 < 0) {
        __builtin_cpu_init();
        g_use_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    if (g_use_avx2 && n >= 28) {
        size_t done = b64_encode_avx2(in, n, out);
        in += done;
        out += done / 3 * 4;
        n -= done;
    }
#endif
    b64_encode_scalar(in, n, out);
}

void ndjson_data_frame(struct evbuffer *out, enum ndjson_stream s, const void *data, size_t n)
{
    static const char pre_out[] = "{\"stream\":\"stdout\",\"data\":\"";
    static const char pre_err[] = "{\"stream\":\"stderr\",\"data\":\"";
    static const char post[] = "\"}\n";
    size_t total = sizeof(pre_out) - 1 + ndjson_b64_len(n) + sizeof(post) - 1;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)total, &v, 1) < 1)
        return;
    char *p = v.iov_base;
    memcpy(p, s == NDJSON_STDERR ? pre_err : pre_out, sizeof(pre_out) - 1);
    p += sizeof(pre_out) - 1;
    ndjson_b64_encode(data, n, p);
    p += ndjson_b64_len(n);
    memcpy(p, post, sizeof(post) - 1);
    v.iov_len = total;
    evbuffer_commit_space(out, &v, 1);
}

void ndjson_exit_frame(struct evbuffer *out, int code)
{
    evbuffer_add_printf(out, "{\"exitCode\":%d}\n", code);
}

void ndjson_timeout_frame(struct evbuffer *out)
{
    evbuffer_add(out, "{\"timeout\":true}\n", 17);
}

void ndjson_skipped_frame(struct evbuffer *out, uint64_t n)
{
    evbuffer_add_printf(out, "{\"skipped\":%" PRIu64 "}\n", n);
}
