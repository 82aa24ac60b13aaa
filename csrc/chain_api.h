/* Functions of csrc/chain.c (the audit chain writer and verifier) that Python calls
 * through cffi; declared again in chain.cdef. The format is docs/AUDIT_FORMAT.md. */
#ifndef HELIOSDB_CHAIN_API_H
#define HELIOSDB_CHAIN_API_H
#include <stdint.h>

#define HELIOSDB_CHAIN_NTEXT 10

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
int64_t heliosdb_merkle_fold(unsigned char *frontier, int64_t flen, int64_t size, int64_t n,
                             const unsigned char *leaves);
int64_t heliosdb_merkle_root(const unsigned char *frontier, int64_t flen, unsigned char *out);

#endif
