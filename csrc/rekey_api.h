/* csrc/rekey.c: bulk page re-encryption for key rotation (declared again in rekey.cdef). */
#ifndef HELIOSDB_REKEY_API_H
#define HELIOSDB_REKEY_API_H

long long heliosdb_rekey_pages(int src_fd, int dst_fd, const unsigned char *old_dek,
                               const unsigned char *old_fid, const unsigned char *new_dek,
                               const unsigned char *new_fid, int page_size,
                               long long first_page, long long count);

#endif
