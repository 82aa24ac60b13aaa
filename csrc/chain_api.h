/* Functions of csrc/chain.c (the audit chain writer and verifier) that Python calls
 * through cffi; declared again in chain.cdef. The format is docs/AUDIT_FORMAT.md. */
#ifndef HELIOSDB_CHAIN_API_H
#define HELIOSDB_CHAIN_API_H
#include <stdint.h>

#define HELIOSDB_CHAIN_NTEXT 10

/* The result of the SQL aggregate heliosdb_chain_check (csrc/chain.c), byte offsets.
 * Integers are int64 little-endian; heliosdb/audit/chain.py reads these constants through
 * cffi and refuses to import when its decoder disagrees, so a layout change is made here.
 *   n_good        rows that passed, in order
 *   failed        0 or 1: a row failed (bad_id names it)
 *   bad_id        the id of the row that failed (INT64_MIN: no readable id)
 *   last_ts       ts_us of the last good row, meaningful when has_last_ts is 1
 *   has_last_ts   one byte
 *   link          the checksum of the last good row (32 bytes)
 * In tree mode the result continues with tree_size (int64) and the frontier after the
 * last good row (32 bytes per hash, popcount(tree_size) hashes). */
enum heliosdb_chain_check_layout {
    HELIOSDB_CHECK_N_GOOD = 0,
    HELIOSDB_CHECK_FAILED = 8,
    HELIOSDB_CHECK_BAD_ID = 16,
    HELIOSDB_CHECK_LAST_TS = 24,
    HELIOSDB_CHECK_HAS_LAST_TS = 32,
    HELIOSDB_CHECK_LINK = 33,
    HELIOSDB_CHECK_SIZE = 65, /* the result without the tree part */
    HELIOSDB_CHECK_TREE_SIZE = HELIOSDB_CHECK_SIZE,
    HELIOSDB_CHECK_FRONTIER = HELIOSDB_CHECK_TREE_SIZE + 8
};

int heliosdb_chain_format_version(void);
int64_t heliosdb_chain_append(unsigned char *prev, int64_t n,
                              const int64_t *ids, const int64_t *ts,
                              const int64_t *rows, const int64_t *success,
                              const char *text_nulls, const char *rows_nulls,
                              const char *texts, int64_t texts_len,
                              unsigned char *out);
int64_t heliosdb_chain_verify(const unsigned char *expect_prev, int64_t first_id,
                              int64_t last_ts, int64_t n,
                              const int64_t *ids, const int64_t *ts,
                              const int64_t *rows, const int64_t *success,
                              const int64_t *masks, const char *texts, int64_t texts_len,
                              const unsigned char *stored_prev,
                              const unsigned char *stored_ck, unsigned char *last_ck);
int64_t heliosdb_chain_encode(int64_t id, int64_t ts, int64_t rows, int64_t success,
                              int64_t mask, const char *texts, int64_t texts_len,
                              unsigned char *out, int64_t cap);

int heliosdb_chain_register(void *db);
int64_t heliosdb_chain_one(const unsigned char *prev, int64_t id, int64_t ts, int64_t rows,
                           int64_t success, int64_t mask, const char *texts,
                           int64_t texts_len, unsigned char *out);

/* RFC 6962 Merkle tree (leaf = SHA-256(0x00 || encoding), node = SHA-256(0x01 || l || r)) */
int64_t heliosdb_chain_append_leaves(unsigned char *prev, int64_t n,
                                     const int64_t *ids, const int64_t *ts,
                                     const int64_t *rows, const int64_t *success,
                                     const char *text_nulls, const char *rows_nulls,
                                     const char *texts, int64_t texts_len,
                                     unsigned char *out, unsigned char *leaves);
int64_t heliosdb_chain_one_leaf(const unsigned char *prev, int64_t id, int64_t ts,
                                int64_t rows, int64_t success, int64_t mask,
                                const char *texts, int64_t texts_len, unsigned char *out,
                                unsigned char *leaf);
/* The log writer (store.append's fast path): hashes, binds and inserts n events. */
int64_t heliosdb_log_append(void *db, const char *insert_sql, unsigned char *prev,
                            int64_t first_id, int64_t first_ts, int64_t n,
                            const int64_t *rows, const int64_t *success,
                            const char *rows_nulls, const char *texts, int64_t texts_len,
                            unsigned char *leaves, int64_t *changes, char *errmsg,
                            int64_t errcap);
int64_t heliosdb_merkle_fold(unsigned char *frontier, int64_t flen, int64_t size, int64_t n,
                             const unsigned char *leaves);
int64_t heliosdb_merkle_root(const unsigned char *frontier, int64_t flen, unsigned char *out);

#endif
