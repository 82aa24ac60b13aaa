/* Functions of csrc/vfs.c that Python calls through cffi (declared again in vfs.cdef). */
#ifndef HELIOSDB_VFS_API_H
#define HELIOSDB_VFS_API_H
#include <stdint.h>

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
