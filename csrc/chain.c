/* The audit chain in C: canonical encoding of an event + SHA-256 link, one call per batch.
 *
 * Format (docs/AUDIT_FORMAT.md is the reference; heliosdb/audit/events.py the pure twin):
 *   encoding = 0x01 (format version)
 *              id, ts_us, affected_rows, success      each: 0x00 (NULL) | 0x01 + int64 BE
 *              session_id, user, operation, target, query, error, metadata,
 *              old_values, new_values, reason         each: 0x00 (NULL) | 0x02 + u32 BE len + UTF-8
 *   checksum = SHA-256(prev_checksum (32 bytes) || encoding)
 *
 * Calling convention (chosen because cffi charges per argument, not per byte): the ten
 * text fields of every event in a batch arrive as ONE buffer, joined with NUL bytes
 * (a NULL field is an empty slot plus a flag). A text containing U+0000 would shift the
 * slots; the separator count catches that and we return -2 so Python falls back to its
 * own encoder for that batch (same bytes, slower). Integers arrive as column arrays.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1 /* SHA256_* is the cheapest one-shot in OpenSSL 3 */
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chain_api.h"

#define FORMAT_VERSION 1
#define TAG_NULL 0x00
#define TAG_INT 0x01
#define TAG_TEXT 0x02
#define MASK_ROWS_NULL (1LL << HELIOSDB_CHAIN_NTEXT)
/* Set in a mask: a NULL text is the one-byte slot NULL_SLOT (the log writer's buffer),
 * not an empty slot with its bit set (the chain and verify calls' convention). */
#define MASK_NULL_SLOTS (1LL << 62)
#define NULL_SLOT 0x01

#define E_MALFORMED (-2)
#define E_TOOLONG (-3)
#define E_NOMEM (-4)

int heliosdb_chain_format_version(void) { return FORMAT_VERSION; }

/* SHA-256 of one buffer. OpenSSL 3's one-shot SHA256() goes through EVP_Q_digest, which
 * fetches the algorithm on every call (about 0.4 us here, more than hashing an event);
 * the low-level context functions hash directly (same bytes). */
static inline void sha256_once(const unsigned char *d, size_t n, unsigned char *md) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, d, n);
    SHA256_Final(md, &ctx);
}

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->n + extra) cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p) return E_NOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* ---- RFC 6962 / RFC 9162 section 2.1 Merkle tree over the events ------------------------
 * leaf = SHA-256(0x00 || encoding(event)), node = SHA-256(0x01 || left || right).
 * The tree is kept as its frontier: the roots of the perfect subtrees that the binary
 * digits of the tree size decompose it into, largest (leftmost) first, popcount(size)
 * hashes. heliosdb/audit/merkle.py is the pure-Python twin. */
#define MERKLE_MAX_FRONTIER 64

/* b holds prev (32 bytes) || encoding: the leaf hash covers 0x00 || encoding, which is the
 * buffer from byte 31 with that byte set to 0x00 (prev is not needed any more). */
static inline void leaf_of_buffer(buf_t *b, unsigned char *md) {
    b->p[31] = 0x00;
    sha256_once(b->p + 31, b->n - 31, md);
}

static inline void node_hash(const unsigned char *l, const unsigned char *r, unsigned char *md) {
    unsigned char in[65];
    in[0] = 0x01;
    memcpy(in + 1, l, 32);
    memcpy(in + 33, r, 32);
    sha256_once(in, 65, md);
}

/* Appends n leaves to a tree of `size` leaves whose frontier (flen hashes) is in frontier
 * (room for MERKLE_MAX_FRONTIER hashes). Returns the new frontier length, or -1 when the
 * frontier does not fit the size (flen != popcount(size), a negative size). */
static int64_t merkle_fold(unsigned char *frontier, int64_t flen, int64_t size, int64_t n,
                           const unsigned char *leaves) {
    if (size < 0 || n < 0 || flen != __builtin_popcountll((unsigned long long)size)) return -1;
    for (int64_t i = 0; i < n; i++) {
        unsigned char h[32];
        memcpy(h, leaves + 32 * i, 32);
        uint64_t k = (uint64_t)size;
        while (k & 1) { /* merge with the equal-sized subtree on the left */
            flen--;
            node_hash(frontier + 32 * flen, h, h);
            k >>= 1;
        }
        memcpy(frontier + 32 * flen, h, 32);
        flen++;
        size++;
    }
    return flen;
}

int64_t heliosdb_merkle_fold(unsigned char *frontier, int64_t flen, int64_t size, int64_t n,
                             const unsigned char *leaves) {
    return merkle_fold(frontier, flen, size, n, leaves);
}

/* The root (RFC 6962 MTH) of the tree a frontier describes: the subtrees folded from the
 * right. An empty tree (flen 0) has root SHA-256(""). */
int64_t heliosdb_merkle_root(const unsigned char *frontier, int64_t flen, unsigned char *out) {
    if (flen < 0 || flen > MERKLE_MAX_FRONTIER) return -1;
    if (flen == 0) { sha256_once((const unsigned char *)"", 0, out); return 0; }
    unsigned char h[32];
    memcpy(h, frontier + 32 * (flen - 1), 32);
    for (int64_t i = flen - 2; i >= 0; i--) node_hash(frontier + 32 * i, h, h);
    memcpy(out, h, 32);
    return 0;
}

static inline void put_int(unsigned char *q, int64_t v) {
    uint64_t u = (uint64_t)v;
    q[0] = TAG_INT;
    for (int i = 8; i >= 1; i--) { q[i] = (unsigned char)(u & 0xff); u >>= 8; }
}

/* Splits the next text slot out of [*cur, end): sets *len and advances *cur past the NUL.
 * `last` says the slot is the final one of the whole buffer (it ends at `end`, no NUL). */
static inline int next_slot(const char **cur, const char *end, int last, const char **start,
                            size_t *len) {
    const char *c = *cur;
    const char *z = memchr(c, 0, (size_t)(end - c));
    if (last) {
        if (z) return E_MALFORMED; /* an extra NUL: some text contained U+0000 */
        z = end;
    } else if (!z) {
        return E_MALFORMED;
    }
    *start = c;
    *len = (size_t)(z - c);
    *cur = last ? z : z + 1;
    return 0;
}

/* Strict UTF-8 check (no overlong forms, no surrogates, nothing above U+10FFFF): what
 * Python's strict decoder accepts. The verifier refuses any stored text that fails it, so
 * bytes that are not UTF-8 can never hash like some other value. */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t k;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) { k = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { k = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { k = 3; cp = c & 0x07; }
        else return 0;
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            unsigned char d = s[i + j];
            if ((d & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (d & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

#define E_BADTEXT (-5) /* internal: a stored text is not valid UTF-8 (the row is bad) */

/* ---- The encoding, written once: every path (writer, batch verifier, SQL aggregate)
 * builds prev || encoding(event) with these two helpers, so they cannot drift apart. */

/* Starts b with prev (32 bytes; left as is when NULL) || the format version || id, ts_us,
 * affected_rows (NULL when rows_null), success. */
static int encode_head(buf_t *b, const unsigned char *prev, int64_t id, int64_t ts,
                       int rows_null, int64_t rows, int64_t success) {
    b->n = 0;
    if (buf_reserve(b, 32 + 1 + 4 * 9)) return E_NOMEM;
    unsigned char *q = b->p;
    if (prev) memcpy(q, prev, 32);
    q += 32;
    *q++ = FORMAT_VERSION;
    put_int(q, id); q += 9;
    put_int(q, ts); q += 9;
    if (rows_null) *q++ = TAG_NULL; else { put_int(q, rows); q += 9; }
    put_int(q, success); q += 9;
    b->n = (size_t)(q - b->p);
    return 0;
}

/* Appends one text field: TAG_NULL when s is NULL, else TAG_TEXT + u32 BE length + bytes.
 * With check_utf8 (the verifiers: stored bytes), text that is not valid UTF-8 returns
 * E_BADTEXT: no event encodes to it. */
static int encode_text(buf_t *b, const unsigned char *s, size_t len, int check_utf8) {
    if (!s) {
        if (buf_reserve(b, 1)) return E_NOMEM;
        b->p[b->n++] = TAG_NULL;
        return 0;
    }
    if (len > 0xffffffffu) return E_TOOLONG;
    if (check_utf8 && !valid_utf8(s, len)) return E_BADTEXT;
    if (buf_reserve(b, 5 + len)) return E_NOMEM;
    unsigned char *q = b->p + b->n;
    q[0] = TAG_TEXT;
    q[1] = (unsigned char)(len >> 24);
    q[2] = (unsigned char)(len >> 16);
    q[3] = (unsigned char)(len >> 8);
    q[4] = (unsigned char)len;
    if (len) memcpy(q + 5, s, len);
    b->n += 5 + len;
    return 0;
}

/* Appends prev || encoding(event) to b (b->n reset first), the texts taken from the
 * NUL-joined slots at *cur. A text slot is NULL when its bit is set in mask (its slot must
 * then be empty). With `check_utf8` set (the verifier), a non-NULL slot that is not valid
 * UTF-8 returns E_BADTEXT. */
static int encode_event(buf_t *b, const unsigned char *prev, int64_t id, int64_t ts,
                        int64_t rows, int64_t success, int64_t mask, int check_utf8,
                        const char **cur, const char *end, int last_event) {
    int rc = encode_head(b, prev, id, ts, (mask & MASK_ROWS_NULL) != 0, rows, success);
    if (rc) return rc;
    for (int f = 0; f < HELIOSDB_CHAIN_NTEXT; f++) {
        const char *s;
        size_t len;
        rc = next_slot(cur, end, last_event && f == HELIOSDB_CHAIN_NTEXT - 1, &s, &len);
        if (rc) return rc;
        int is_null;
        if (mask & MASK_NULL_SLOTS) {
            is_null = len == 1 && (unsigned char)*s == NULL_SLOT;
        } else {
            is_null = (mask & (1LL << f)) != 0;
            if (is_null && len) return E_MALFORMED; /* a NULL field must have an empty slot */
        }
        rc = encode_text(b, is_null ? NULL : (const unsigned char *)s, len, check_utf8);
        if (rc) return rc;
    }
    return 0;
}

/* Writer: computes the checksums of n consecutive events starting from *prev; on success
 * out holds n*32 bytes and prev the last checksum. Returns 0 or a negative E_* code. */
static int64_t chain_append(unsigned char *prev, int64_t n, const int64_t *ids,
                            const int64_t *ts, const int64_t *rows, const int64_t *success,
                            const char *text_nulls, const char *rows_nulls,
                            const char *texts, int64_t texts_len, unsigned char *out,
                            unsigned char *leaves) {
    buf_t b = {0};
    const char *cur = texts, *end = texts + texts_len;
    const unsigned char *link = prev;
    int64_t rc = 0;
    if (n <= 0) return 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t mask = rows_nulls[i] ? MASK_ROWS_NULL : 0;
        const char *tn = text_nulls + i * HELIOSDB_CHAIN_NTEXT;
        for (int f = 0; f < HELIOSDB_CHAIN_NTEXT; f++)
            if (tn[f]) mask |= 1LL << f;
        rc = encode_event(&b, link, ids[i], ts[i], rows[i], success[i], mask, 0, &cur, end,
                          i == n - 1);
        if (rc) break;
        sha256_once(b.p, b.n, out + 32 * i);
        if (leaves) leaf_of_buffer(&b, leaves + 32 * i);
        link = out + 32 * i;
    }
    if (!rc) memcpy(prev, out + 32 * (n - 1), 32);
    free(b.p);
    return rc;
}

int64_t heliosdb_chain_append(unsigned char *prev, int64_t n, const int64_t *ids,
                              const int64_t *ts, const int64_t *rows, const int64_t *success,
                              const char *text_nulls, const char *rows_nulls,
                              const char *texts, int64_t texts_len, unsigned char *out) {
    return chain_append(prev, n, ids, ts, rows, success, text_nulls, rows_nulls, texts,
                        texts_len, out, NULL);
}

/* As heliosdb_chain_append, and also writes each event's RFC 6962 leaf hash,
 * SHA-256(0x00 || encoding), to leaves (n * 32 bytes). */
int64_t heliosdb_chain_append_leaves(unsigned char *prev, int64_t n, const int64_t *ids,
                                     const int64_t *ts, const int64_t *rows,
                                     const int64_t *success, const char *text_nulls,
                                     const char *rows_nulls, const char *texts,
                                     int64_t texts_len, unsigned char *out,
                                     unsigned char *leaves) {
    return chain_append(prev, n, ids, ts, rows, success, text_nulls, rows_nulls, texts,
                        texts_len, out, leaves);
}

/* Verifier fast path: checks n stored rows against the chain. Row i is good when its id is
 * first_id + i, its ts_us is greater than the previous one (last_ts for row 0), its stored
 * prev equals the previous stored checksum (expect_prev for row 0), and SHA-256(stored prev
 * || encoding) equals its stored checksum. Texts come as the table stores them (UTF-8
 * bytes), all slots NUL-separated, a NULL text being an empty slot with its bit set in
 * the row's mask (bit f: text field f is NULL; bit NTEXT: affected_rows is NULL). A text
 * that is not valid UTF-8 makes its row bad (it cannot be the encoding of any event).
 * Returns -1 when all are good (last_ck then holds the last checksum), the index of the
 * first bad row, or a negative E_* code (< -1). Python re-examines the bad row slowly to
 * name the fault. */
int64_t heliosdb_chain_verify(const unsigned char *expect_prev, int64_t first_id,
                              int64_t last_ts, int64_t n, const int64_t *ids,
                              const int64_t *ts, const int64_t *rows, const int64_t *success,
                              const int64_t *masks, const char *texts, int64_t texts_len,
                              const unsigned char *stored_prev, const unsigned char *stored_ck,
                              unsigned char *last_ck) {
    buf_t b = {0};
    const char *cur = texts, *end = texts + texts_len;
    const unsigned char *link = expect_prev;
    unsigned char md[32];
    int64_t result = -1;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] != first_id + i || ts[i] <= last_ts ||
            memcmp(stored_prev + 32 * i, link, 32) != 0) {
            result = i;
            break;
        }
        int64_t rc = encode_event(&b, stored_prev + 32 * i, ids[i], ts[i], rows[i], success[i],
                                  masks[i], 1, &cur, end, i == n - 1);
        if (rc == E_BADTEXT) { result = i; break; }
        if (rc) { result = rc; break; }
        sha256_once(b.p, b.n, md);
        if (memcmp(md, stored_ck + 32 * i, 32) != 0) { result = i; break; }
        link = stored_ck + 32 * i;
        last_ts = ts[i];
    }
    if (result == -1 && n > 0) memcpy(last_ck, link, 32);
    free(b.p);
    return result;
}

/* The encoding of one event (without prev): returns its length; writes it to out when it
 * fits in cap. Negative E_* code on malformed input. For tests and the format document. */
int64_t heliosdb_chain_encode(int64_t id, int64_t ts, int64_t rows, int64_t success,
                              int64_t mask, const char *texts, int64_t texts_len,
                              unsigned char *out, int64_t cap) {
    buf_t b = {0};
    const char *cur = texts;
    int64_t rc = encode_event(&b, NULL, id, ts, rows, success, mask, 0, &cur,
                              texts + texts_len, 1);
    if (rc == 0) {
        rc = (int64_t)b.n - 32;
        if (rc <= cap) memcpy(out, b.p + 32, (size_t)rc);
    }
    free(b.p);
    return rc;
}

/* ---- The verifier as a SQL aggregate: no Python object per row ------------------------
 *
 * heliosdb_chain_check(expect_prev, first_id, last_ts,
 *                      id, ts_us, affected_rows, success, <10 texts>, prev_hash, checksum)
 * walks rows in the order SQLite feeds them (a rowid range scan: id order) with the same
 * rules as heliosdb_chain_verify and the same encoding (encode_head, encode_text), reading
 * values with their storage class (a BLOB in a text column or text in an integer column
 * fails the row). It returns the HELIOSDB_CHECK_SIZE-byte blob whose layout chain_api.h
 * defines (rows good, the failing id, the last good row's ts_us and checksum), or NULL when
 * it saw no row. It stops checking at the first bad row; Python then names
 * the fault. SQLite API calls go through the sqlite3_api table that vfs.c's extension
 * entry point stores (SQLITE_EXTENSION_INIT1 there): registration needs the extension to
 * have been loaded into APSW's SQLite once. */
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3

#define CHECK_NARGS (3 + 4 + HELIOSDB_CHAIN_NTEXT + 2)

/* The layout in chain_api.h has no gaps and no overlaps (its fields are 8, 1 and 32 bytes). */
_Static_assert(HELIOSDB_CHECK_HAS_LAST_TS == HELIOSDB_CHECK_LAST_TS + 8 &&
               HELIOSDB_CHECK_LINK == HELIOSDB_CHECK_HAS_LAST_TS + 1 &&
               HELIOSDB_CHECK_SIZE == HELIOSDB_CHECK_LINK + 32,
               "heliosdb_chain_check result layout");

typedef struct {
    int init, failed, has_last_ts, tree;
    int64_t expect_id, last_ts, n_good, bad_id;
    int64_t tree_size, flen;
    unsigned char link[32];
    unsigned char frontier[32 * MERKLE_MAX_FRONTIER];
    buf_t b;
} check_state;

static void put_le(unsigned char *q, int64_t v) {
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++) { q[i] = (unsigned char)(u & 0xff); u >>= 8; }
}

static void check_step(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    check_state *s = sqlite3_aggregate_context(ctx, (int)sizeof(check_state));
    if (!s) { sqlite3_result_error_nomem(ctx); return; }
    if (!s->init && argc == CHECK_NARGS + 2) {
        /* Tree mode: heliosdb_chain_check(frontier, tree_size, <the usual arguments>) also
         * folds each good row's leaf hash into the frontier. */
        s->tree = 1;
        s->tree_size = sqlite3_value_int64(argv[1]);
        int fb = sqlite3_value_bytes(argv[0]);
        s->flen = fb / 32;
        if ((sqlite3_value_type(argv[0]) != SQLITE_BLOB && fb != 0) || fb % 32 != 0 ||
            sqlite3_value_type(argv[1]) != SQLITE_INTEGER || s->tree_size < 0 ||
            s->flen != __builtin_popcountll((unsigned long long)s->tree_size)) {
            sqlite3_result_error(ctx, "heliosdb_chain_check: frontier does not fit tree_size", -1);
            s->init = 1;
            s->failed = 1;
            s->bad_id = INT64_MIN;
            return;
        }
        if (fb) memcpy(s->frontier, sqlite3_value_blob(argv[0]), (size_t)fb);
    }
    if (s->tree) argv += 2;
    if (!s->init) {
        s->init = 1;
        if (sqlite3_value_type(argv[0]) != SQLITE_BLOB || sqlite3_value_bytes(argv[0]) != 32) {
            sqlite3_result_error(ctx, "heliosdb_chain_check: expect_prev must be 32 bytes", -1);
            s->failed = 1;
            s->bad_id = INT64_MIN;
            return;
        }
        memcpy(s->link, sqlite3_value_blob(argv[0]), 32);
        s->expect_id = sqlite3_value_int64(argv[1]);
        s->has_last_ts = sqlite3_value_type(argv[2]) != SQLITE_NULL;
        s->last_ts = sqlite3_value_int64(argv[2]);
    }
    if (s->failed) return;
    sqlite3_value **v = argv + 3;
    int bad = sqlite3_value_type(v[0]) != SQLITE_INTEGER;
    int64_t id = bad ? INT64_MIN : sqlite3_value_int64(v[0]);
    s->bad_id = id;
    bad |= sqlite3_value_type(v[1]) != SQLITE_INTEGER ||
           sqlite3_value_type(v[3]) != SQLITE_INTEGER ||
           (sqlite3_value_type(v[2]) != SQLITE_INTEGER && sqlite3_value_type(v[2]) != SQLITE_NULL);
    const unsigned char *prev = NULL, *ck = NULL;
    if (!bad) {
        int tp = sqlite3_value_type(v[4 + HELIOSDB_CHAIN_NTEXT]);
        int tc = sqlite3_value_type(v[5 + HELIOSDB_CHAIN_NTEXT]);
        bad = tp != SQLITE_BLOB || tc != SQLITE_BLOB ||
              sqlite3_value_bytes(v[4 + HELIOSDB_CHAIN_NTEXT]) != 32 ||
              sqlite3_value_bytes(v[5 + HELIOSDB_CHAIN_NTEXT]) != 32;
        if (!bad) {
            prev = sqlite3_value_blob(v[4 + HELIOSDB_CHAIN_NTEXT]);
            ck = sqlite3_value_blob(v[5 + HELIOSDB_CHAIN_NTEXT]);
        }
    }
    int64_t ts = sqlite3_value_int64(v[1]);
    if (!bad) bad = id != s->expect_id || (s->has_last_ts && ts <= s->last_ts) ||
                    memcmp(prev, s->link, 32) != 0;
    if (!bad) {
        buf_t *b = &s->b;
        int rc = encode_head(b, prev, id, ts, sqlite3_value_type(v[2]) == SQLITE_NULL,
                             sqlite3_value_int64(v[2]), sqlite3_value_int64(v[3]));
        for (int f = 0; f < HELIOSDB_CHAIN_NTEXT && !rc; f++) {
            sqlite3_value *t = v[4 + f];
            int ty = sqlite3_value_type(t);
            if (ty == SQLITE_NULL) {
                rc = encode_text(b, NULL, 0, 0);
                continue;
            }
            if (ty != SQLITE_TEXT) { bad = 1; break; } /* a BLOB or number is no event text */
            const unsigned char *z = sqlite3_value_text(t); /* UTF-8 whatever the db encoding */
            size_t len = (size_t)sqlite3_value_bytes(t);
            if (!z && len) { rc = E_NOMEM; break; }
            rc = encode_text(b, z ? z : (const unsigned char *)"", len, 1);
        }
        if (rc == E_BADTEXT) {
            bad = 1; /* not text any event can hold */
        } else if (rc) {
            sqlite3_result_error_nomem(ctx);
            s->failed = 1;
            return;
        }
        if (!bad) {
            unsigned char md[32];
            sha256_once(b->p, b->n, md);
            bad = memcmp(md, ck, 32) != 0;
        }
    }
    if (bad) {
        s->failed = 1;
        return;
    }
    if (s->tree) {
        unsigned char leaf[32];
        leaf_of_buffer(&s->b, leaf);
        s->flen = merkle_fold(s->frontier, s->flen, s->tree_size, 1, leaf);
        s->tree_size++;
    }
    memcpy(s->link, ck, 32);
    s->last_ts = ts;
    s->has_last_ts = 1;
    s->expect_id++;
    s->n_good++;
}

static void check_final(sqlite3_context *ctx) {
    check_state *s = sqlite3_aggregate_context(ctx, 0);
    if (!s) { sqlite3_result_null(ctx); return; }
    /* the layout is HELIOSDB_CHECK_* in chain_api.h (heliosdb/audit/chain.py decodes it) */
    unsigned char out[HELIOSDB_CHECK_FRONTIER + 32 * MERKLE_MAX_FRONTIER];
    put_le(out + HELIOSDB_CHECK_N_GOOD, s->n_good);
    put_le(out + HELIOSDB_CHECK_FAILED, s->failed);
    put_le(out + HELIOSDB_CHECK_BAD_ID, s->bad_id);
    put_le(out + HELIOSDB_CHECK_LAST_TS, s->last_ts);
    out[HELIOSDB_CHECK_HAS_LAST_TS] = (unsigned char)s->has_last_ts;
    memcpy(out + HELIOSDB_CHECK_LINK, s->link, 32);
    int n = HELIOSDB_CHECK_SIZE;
    if (s->tree) {
        put_le(out + HELIOSDB_CHECK_TREE_SIZE, s->tree_size);
        memcpy(out + HELIOSDB_CHECK_FRONTIER, s->frontier, (size_t)(32 * s->flen));
        n = HELIOSDB_CHECK_FRONTIER + 32 * (int)s->flen;
    }
    free(s->b.p);
    s->b.p = NULL;
    sqlite3_result_blob(ctx, out, n, SQLITE_TRANSIENT);
}

/* Registers heliosdb_chain_check on a connection (an apsw.Connection's sqlite3pointer()).
 * Returns 0, -1 when the extension was never loaded (no sqlite3_api), or a SQLite code. */
int heliosdb_chain_register(void *db) {
    if (!sqlite3_api) return -1;
    int rc = sqlite3_create_function_v2((sqlite3 *)db, "heliosdb_chain_check", CHECK_NARGS,
                                        SQLITE_UTF8 | SQLITE_DIRECTONLY, NULL, NULL, check_step,
                                        check_final, NULL);
    if (rc) return rc;
    return sqlite3_create_function_v2((sqlite3 *)db, "heliosdb_chain_check", CHECK_NARGS + 2,
                                      SQLITE_UTF8 | SQLITE_DIRECTONLY, NULL, NULL, check_step,
                                      check_final, NULL);
}

/* One event, scalar arguments (no arrays to build on the Python side): the capture path
 * appends one event per statement, where per-call overhead is what counts. */
int64_t heliosdb_chain_one(const unsigned char *prev, int64_t id, int64_t ts, int64_t rows,
                           int64_t success, int64_t mask, const char *texts,
                           int64_t texts_len, unsigned char *out) {
    buf_t b = {0};
    const char *cur = texts;
    int64_t rc = encode_event(&b, prev, id, ts, rows, success, mask, 0, &cur, texts + texts_len, 1);
    if (rc == 0) sha256_once(b.p, b.n, out);
    free(b.p);
    return rc;
}

/* As heliosdb_chain_one, and also writes the event's leaf hash to leaf (32 bytes). */
int64_t heliosdb_chain_one_leaf(const unsigned char *prev, int64_t id, int64_t ts,
                                int64_t rows, int64_t success, int64_t mask,
                                const char *texts, int64_t texts_len, unsigned char *out,
                                unsigned char *leaf) {
    buf_t b = {0};
    const char *cur = texts;
    int64_t rc = encode_event(&b, prev, id, ts, rows, success, mask, 0, &cur, texts + texts_len, 1);
    if (rc == 0) {
        sha256_once(b.p, b.n, out);
        leaf_of_buffer(&b, leaf);
    }
    free(b.p);
    return rc;
}

/* ---- The log writer: a batch of events hashed, bound and inserted in one call ------------
 * heliosdb/audit/store.append's fast path. Python hands over the ten texts of every event
 * NUL-joined in one buffer, a NULL text being the one-byte slot 0x01 (NULL_SLOT: Python
 * sends a batch where some text is exactly U+0001 down its other path), the integer
 * columns as arrays, the connection and the INSERT (store._insert_sql: the 16 columns of
 * events.COLUMNS in order).
 * Per event: encode, SHA-256 link and RFC 6962 leaf, bind (texts straight from the buffer),
 * step. The statement is prepared and finalized inside the call: a statement left prepared
 * would make APSW's Connection.close() spin on SQLITE_BUSY forever, so none outlives it.
 *
 * Returns 0 (prev then holds the last checksum, leaves n*32 bytes, *changes what the
 * inserts changed: sqlite3_total_changes64's difference, triggers included), a negative
 * E_* code before anything is written (E_MALFORMED: a text holds U+0000, the caller takes
 * its own path), -1 when the extension was never loaded, or a positive SQLite extended
 * error code with its message in errmsg (the batch may be partly written: the caller rolls
 * the transaction back, as it does when executemany fails). */
/* Splits the next slot of the writer's buffer: *is_null when it is the NULL_SLOT byte. */
static inline int next_text(const char **cur, const char *end, int last, const char **s,
                            size_t *len, int *is_null) {
    int rc = next_slot(cur, end, last, s, len);
    *is_null = !rc && *len == 1 && (unsigned char)**s == NULL_SLOT;
    return rc;
}

int64_t heliosdb_log_append(void *db_, const char *insert_sql, unsigned char *prev,
                            int64_t first_id, int64_t first_ts, int64_t n,
                            const int64_t *rows, const int64_t *success,
                            const char *rows_nulls, const char *texts, int64_t texts_len,
                            unsigned char *leaves, int64_t *changes, char *errmsg,
                            int64_t errcap) {
    sqlite3 *db = (sqlite3 *)db_;
    if (!sqlite3_api) return -1;
    if (n <= 0) { *changes = 0; return 0; }
    /* Pass 1: every checksum and leaf, before any write (a malformed buffer writes nothing). */
    unsigned char *cks = malloc((size_t)n * 32);
    if (!cks) return E_NOMEM;
    buf_t b = {0};
    const char *cur = texts, *end = texts + texts_len;
    const unsigned char *link = prev;
    int64_t rc = 0;
    for (int64_t i = 0; i < n && !rc; i++) {
        int64_t mask = MASK_NULL_SLOTS | (rows_nulls[i] ? MASK_ROWS_NULL : 0);
        rc = encode_event(&b, link, first_id + i, first_ts + i, rows[i], success[i], mask, 0,
                          &cur, end, i == n - 1);
        if (rc) break;
        sha256_once(b.p, b.n, cks + 32 * i);
        leaf_of_buffer(&b, leaves + 32 * i);
        link = cks + 32 * i;
    }
    free(b.p);
    if (rc) { free(cks); return rc; }

    /* Pass 2: the rows. Column order: id, ts_us, session_id, user, operation, target,
     * query, affected_rows, success, error, metadata, old_values, new_values, reason,
     * prev_hash, checksum; text field f of the buffer goes to column text_col[f]. */
    static const int text_col[HELIOSDB_CHAIN_NTEXT] = {3, 4, 5, 6, 7, 10, 11, 12, 13, 14};
    /* What each text parameter holds now: a field equal to the previous event's (the
     * session, user, operation, target and query of a run of one statement) keeps its
     * binding. sqlite3_reset keeps bindings, and a SQLITE_STATIC binding may point at the
     * previous event's slot: the whole buffer outlives the call. */
    const char *bound_s[HELIOSDB_CHAIN_NTEXT];
    size_t bound_len[HELIOSDB_CHAIN_NTEXT];
    signed char bound[HELIOSDB_CHAIN_NTEXT]; /* -1 nothing bound yet, 0 text, 1 NULL */
    memset(bound, -1, sizeof bound);
    sqlite3_stmt *st = NULL;
    sqlite3_int64 before = sqlite3_total_changes64(db);
    rc = sqlite3_prepare_v3(db, insert_sql, -1, 0, &st, NULL);
    cur = texts;
    for (int64_t i = 0; i < n && rc == SQLITE_OK; i++) {
        sqlite3_bind_int64(st, 1, first_id + i);
        sqlite3_bind_int64(st, 2, first_ts + i);
        for (int f = 0; f < HELIOSDB_CHAIN_NTEXT; f++) {
            const char *s;
            size_t len;
            int is_null;
            next_text(&cur, end, i == n - 1 && f == HELIOSDB_CHAIN_NTEXT - 1, &s, &len,
                      &is_null);
            if (is_null) {
                if (bound[f] != 1) sqlite3_bind_null(st, text_col[f]);
                bound[f] = 1;
            } else if (bound[f] != 0 || bound_len[f] != len || memcmp(bound_s[f], s, len)) {
                sqlite3_bind_text64(st, text_col[f], s, len, SQLITE_STATIC, SQLITE_UTF8);
                bound[f] = 0;
                bound_s[f] = s;
                bound_len[f] = len;
            }
        }
        if (rows_nulls[i]) sqlite3_bind_null(st, 8);
        else sqlite3_bind_int64(st, 8, rows[i]);
        sqlite3_bind_int64(st, 9, success[i]);
        sqlite3_bind_blob(st, 15, i ? cks + 32 * (i - 1) : prev, 32, SQLITE_STATIC);
        sqlite3_bind_blob(st, 16, cks + 32 * i, 32, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) rc = sqlite3_reset(st);
    }
    if (rc != SQLITE_OK) {
        /* sqlite3_step's code may be the primary one; the connection has the extended one. */
        int ext = sqlite3_extended_errcode(db);
        if (ext && (ext & 0xff) == (rc & 0xff)) rc = ext;
        snprintf(errmsg, (size_t)errcap, "%s", sqlite3_errmsg(db));
    } else {
        memcpy(prev, cks + 32 * (n - 1), 32);
        *changes = (int64_t)(sqlite3_total_changes64(db) - before);
    }
    sqlite3_finalize(st);
    free(cks);
    return rc;
}
