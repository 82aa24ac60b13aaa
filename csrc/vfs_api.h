/* Functions of csrc/vfs.c that Python calls through cffi (declared again in vfs.cdef). */
#ifndef HELIOSDB_VFS_API_H
#define HELIOSDB_VFS_API_H
#include <stdint.h>

/* The counters of heliosdb_stats(), by index. This is their one definition: the block
** between the cdef markers is also handed to cffi (csrc/build_native.py), and
** heliosdb/crypto/vfs.py names each counter after its enumerator (HELIOSDB_STAT_PAGE1_
** CACHE_HITS is "page1_cache_hits"). Add a counter before HELIOSDB_STAT_COUNT. */
/* cdef-begin */
enum heliosdb_stat {
  HELIOSDB_STAT_PAGE_ENCRYPTIONS = 0, /* pages sealed (main, journal, WAL) */
  HELIOSDB_STAT_PAGE_DECRYPTIONS = 1, /* pages opened, failures included */
  HELIOSDB_STAT_PAGE1_CACHE_HITS = 2, /* page-1 reads served from the page-1 cache */
  HELIOSDB_STAT_AUTH_FAILURES = 3,    /* pages that failed authentication */
  HELIOSDB_STAT_TEMP_BYTES_CIPHERED = 4, /* bytes of temp files through AES-CTR */
  HELIOSDB_STAT_PAGE1_RETRIES = 5,    /* page-1 reads retried after a failure */
  HELIOSDB_STAT_COUNT = 6             /* the number of counters, not a counter */
};
/* cdef-end */

int heliosdb_vfs_registered(void);
int heliosdb_full_pathname(const char *zIn, char *zOut, int nOut);
int heliosdb_key_register(const char *zPath, const unsigned char *dek,
                          const unsigned char *file_id);
int heliosdb_key_unregister(const char *zPath);
int heliosdb_key_addref(const char *zPath, const unsigned char *file_id);
int heliosdb_key_info(const char *zPath, long long *pending, int *page_size,
                      long long *hdr_db_pages);
int heliosdb_last_error(char *zFile, int nFile, char *zMsg, int nMsg, long long *page);
void heliosdb_clear_last_error(void);
int heliosdb_page_encrypt(const unsigned char *dek, const unsigned char *file_id,
                          int domain, uint32_t pgno, const unsigned char *nonce,
                          const unsigned char *in, unsigned char *out, int page_size);
int heliosdb_page_decrypt(const unsigned char *dek, const unsigned char *file_id,
                          int domain, uint32_t pgno, const unsigned char *in,
                          unsigned char *out, int page_size);
void heliosdb_stats(long long *out, int n);
int heliosdb_gcm_encrypt_raw(const unsigned char *key, const unsigned char *iv,
                             const unsigned char *aad, int naad, const unsigned char *in,
                             int n, unsigned char *out, unsigned char *tag);

#endif
