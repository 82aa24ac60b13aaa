/*
** Bulk re-encryption of the pages of a HeliosDB main database file (key rotation).
**
** heliosdb_rekey_pages(src_fd, dst_fd, old_dek, old_fid, new_dek, new_fid, page_size,
**                      first_page, count)
** reads pages first_page .. first_page+count-1 of the main file open as src_fd (page p
** at offset 4096 + (p-1)*page_size), authenticates and decrypts each under
** (old_dek, old_fid) in domain 0, encrypts the plaintext under (new_dek, new_fid) with a
** fresh random nonce, and writes it at the same offset of dst_fd. The transform is the
** one of csrc/vfs.c and heliosdb/crypto/pages.py (docs/FORMAT.md, "Pages").
**
** Returns 0 on success; the page number (> 0) of the first page that fails
** authentication (nothing after it is written); -1 on a read error or a short file,
** -2 on a write error, -3 on bad arguments or a crypto/allocation failure.
** Plaintext only ever sits in one page buffer, wiped before returning. The caller
** holds the locks that keep the source stable (heliosdb/crypto/rekey.py).
*/
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "rekey_api.h"

#define RK_HDR 4096
#define RK_NONCE 12
#define RK_TAG 16
#define RK_OVER (RK_NONCE + RK_TAG)
#define RK_CHUNK 256

static void rk_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);  p[3] = (unsigned char)v;
}

static void rk_aad(unsigned char *a, const unsigned char *fid, uint32_t pgno) {
  memcpy(a, "HDB1", 4);
  memcpy(a + 4, fid, 16);
  rk_be32(a + 20, 1); /* format version */
  a[24] = 0;          /* domain: main file */
  rk_be32(a + 25, pgno);
}

static int rk_pread_full(int fd, unsigned char *b, size_t n, off_t off) {
  while (n) {
    ssize_t r = pread(fd, b, n, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    b += r; n -= (size_t)r; off += r;
  }
  return 0;
}

static int rk_pwrite_full(int fd, const unsigned char *b, size_t n, off_t off) {
  while (n) {
    ssize_t r = pwrite(fd, b, n, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    b += r; n -= (size_t)r; off += r;
  }
  return 0;
}

long long heliosdb_rekey_pages(int src_fd, int dst_fd, const unsigned char *old_dek,
                               const unsigned char *old_fid, const unsigned char *new_dek,
                               const unsigned char *new_fid, int page_size,
                               long long first_page, long long count) {
  if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1)) ||
      first_page < 1 || count < 0 || first_page + count - 1 > 0xFFFFFFFFLL)
    return -3;
  long long rc = 0;
  int n = page_size - RK_OVER, len = 0;
  unsigned char aad[29], nonces[RK_CHUNK * RK_NONCE];
  unsigned char *in = malloc((size_t)page_size * RK_CHUNK);
  unsigned char *out = malloc((size_t)page_size * RK_CHUNK);
  unsigned char *plain = malloc((size_t)page_size);
  EVP_CIPHER_CTX *dec = EVP_CIPHER_CTX_new(), *enc = EVP_CIPHER_CTX_new();
  if (!in || !out || !plain || !dec || !enc ||
      EVP_DecryptInit_ex(dec, EVP_aes_256_gcm(), NULL, old_dek, NULL) != 1 ||
      EVP_EncryptInit_ex(enc, EVP_aes_256_gcm(), NULL, new_dek, NULL) != 1) {
    rc = -3;
    goto done;
  }
  for (long long done = 0; done < count;) {
    int k = (int)((count - done) < RK_CHUNK ? (count - done) : RK_CHUNK);
    off_t off = (off_t)RK_HDR + (off_t)(first_page - 1 + done) * page_size;
    if (rk_pread_full(src_fd, in, (size_t)k * page_size, off)) { rc = -1; goto done; }
    if (RAND_bytes(nonces, k * RK_NONCE) != 1) { rc = -3; goto done; }
    for (int i = 0; i < k; i++) {
      uint32_t pgno = (uint32_t)(first_page + done + i);
      const unsigned char *src = in + (size_t)i * page_size;
      unsigned char *dst = out + (size_t)i * page_size;
      const unsigned char *nonce = nonces + i * RK_NONCE;
      unsigned char tag[RK_TAG];
      memcpy(tag, src + n + RK_NONCE, RK_TAG);
      rk_aad(aad, old_fid, pgno);
      if (EVP_DecryptInit_ex(dec, NULL, NULL, NULL, src + n) != 1 ||
          EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_GCM_SET_TAG, RK_TAG, tag) != 1 ||
          EVP_DecryptUpdate(dec, NULL, &len, aad, 29) != 1 ||
          EVP_DecryptUpdate(dec, plain, &len, src, n) != 1) { rc = -3; goto done; }
      if (EVP_DecryptFinal_ex(dec, plain + len, &len) != 1) { rc = pgno; goto done; }
      rk_aad(aad, new_fid, pgno);
      if (EVP_EncryptInit_ex(enc, NULL, NULL, NULL, nonce) != 1 ||
          EVP_EncryptUpdate(enc, NULL, &len, aad, 29) != 1 ||
          EVP_EncryptUpdate(enc, dst, &len, plain, n) != 1 ||
          EVP_EncryptFinal_ex(enc, dst + len, &len) != 1 ||
          EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_GCM_GET_TAG, RK_TAG, dst + n + RK_NONCE) != 1) {
        rc = -3;
        goto done;
      }
      memcpy(dst + n, nonce, RK_NONCE);
    }
    if (rk_pwrite_full(dst_fd, out, (size_t)k * page_size, off)) { rc = -2; goto done; }
    done += k;
  }
done:
  if (plain) OPENSSL_cleanse(plain, (size_t)page_size);
  if (in) free(in);
  if (out) free(out);
  free(plain);
  EVP_CIPHER_CTX_free(dec);
  EVP_CIPHER_CTX_free(enc);
  return rc;
}
