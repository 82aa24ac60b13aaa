/*
** heliosdb VFS shim: AES-256-GCM encryption of every page SQLite writes.
**
** MANUAL
** ======
** This file is a SQLite loadable extension (entry point sqlite3_heliosdb_init) and part
** of the cffi module heliosdb._native. Loading it (once per process, into APSW's own
** SQLite) registers a VFS named "heliosdb" that sits over the default (unix) VFS, in the
** manner of SQLite's ext/misc/cksumvfs.c. It is never the default VFS: connections opt
** in with vfs="heliosdb". It is built against sqlite3ext.h and never linked with
** -lsqlite3; every SQLite call goes through the sqlite3_api table SQLite hands to the
** entry point, which returns SQLITE_OK_LOAD_PERMANENTLY so that the library stays loaded
** after the loading connection closes.
**
** Keys. Python (heliosdb.crypto) reads the file header, unwraps the data key (DEK) and
** registers it here with heliosdb_key_register(full_path, dek, file_id) before opening
** the database. xOpen of a main database finds its key by its full pathname (the string
** SQLite passes, see heliosdb_full_pathname). Keys never travel in a URI, a filename, SQL
** text or an error message. A main database with no registered key cannot be opened
** through this VFS (SQLITE_CANTOPEN): nothing ever falls back to plaintext. Journals and
** WAL files find their database's key with sqlite3_database_file_object().
**
** Main database file layout:
**     [ HeliosDB header, 4096 bytes ][ SQLite page 1 ][ page 2 ] ...
** The header (written by Python, format in docs/FORMAT.md) holds magic, version, cipher,
** file id, key slots and key-check value; this file reads the magic and file id and keeps
** two mutable fields up to date: the page size (offset 48) and the persisted count of
** GCM encryptions under the DEK (offset 56), flushed at each xSync of the main file.
** Every SQLite offset is shifted by 4096, so SQLite's own 100-byte header is encrypted
** with the rest of page 1: no byte of SQLite's file is stored in clear.
**
** Page transform (domains: 0 main page, 1 rollback-journal page image, 2 WAL frame page):
**     n      = page_size - 28
**     aad    = "HDB1" || file_id[16] || be32(format_version=1) || u8(domain) || be32(pgno)
**     ct,tag = AES-256-GCM(DEK, nonce = 12 fresh random bytes, plaintext = page[0:n], aad)
**     stored = ct || nonce || tag                           (page_size bytes)
** The last 28 bytes of every page are SQLite "reserved bytes": the database must have
** at least 28 (HeliosDB creates it with 32 via SQLITE_FCNTL_RESERVE_BYTES); a page-1
** write with fewer is refused. heliosdb/crypto/pages.py implements the same transform.
**
** Rollback journal: records are be32(pgno) || page || be32(checksum) after a sector-
** aligned header. A page image is an I/O of a page size (power of two 512..65536) at an
** offset = 4 mod 8; it is transformed in domain 1 bound to the pgno stored just before
** it. Journal headers and pgnos stay in clear (no page content); in header version 2
** each record's checksum (a sum of page bytes) is sealed (see "Checksum sealing").
** WAL: 32-byte header, frames of 24-byte header + page; each frame's page is transformed
** in domain 2 bound to the pgno in its frame header. Frame headers stay in clear except,
** in header version 2, the 8-byte frame checksum, which is sealed. A read
** that includes a frame header (WAL recovery) turns a page that fails authentication
** into zeros, so that SQLite's frame checksum ends the log there, as it would for a torn
** frame; a page-only read (normal reads, checkpoints) fails with SQLITE_IOERR_DATA.
** Temp files (temp databases and journals, statement journals, sorter spills, transient
** indexes/VACUUM copies, anything opened without a name): AES-256-CTR keyed by a random
** per-file key made at open and never stored, counter = file offset / 16. They are
** deleted on close; rewrites at one offset reuse keystream, so an attacker needs two
** snapshots of a live temp file to learn the XOR of two versions (documented limit).
** Super-journals hold only journal file names and are passed through.
**
** A decrypted page's 28 reserved bytes read as zeros (SQLite's copy of every page then
** equals what it wrote, which the checksums of WAL frames and journal records need).
**
** Errors. An authentication failure returns SQLITE_IOERR_DATA and records the file name
** and page number in a per-thread slot (heliosdb_last_error) that Python turns into
** CorruptPageError. All-zero pages are not "decrypted": they fail. Short reads stay
** SQLITE_IOERR_SHORT_READ with zero fill. A page-1 read that fails authentication is
** retried (SQLite reads the header without a lock, so another process may be writing
** it), probing other page sizes (after a VACUUM that changed the page size).
** Memory-mapped I/O is impossible: the io_methods are version 2 (no xFetch) and
** SQLITE_FCNTL_MMAP_SIZE answers 0.
**
** Page-1 cache. SQLite re-reads page 1 at the start of every read transaction; the shim
** keeps the last authenticated page 1 (ciphertext and plaintext) per open file and
** serves it again while the stored nonce and tag are unchanged (every write draws a
** fresh random nonce), so that the common case costs a 28-byte read and no decryption.
**
** Page size. New databases may use any page size (512..65536). Changing the page size of
** an existing database in place (PRAGMA page_size + VACUUM) is refused before anything
** is written: SQLite copies the new pages in units of the old size, which have no
** reserved bytes of their own, and may spill some of them before page 1 announces the
** new size. VACUUM INTO a new encrypted file takes the new size.
**
** Nonce budget. Every page sealed (main, journal, WAL) is counted per key; the count is
** added to the header at the main file's xSync and before it gives up a write lock.
**
** Threads. SQLite calls a file's methods from one thread at a time (the connection's
** mutex; a journal or WAL handle and its main file belong to one connection), so the
** fields of an HFile need no lock. What several connections and threads share:
**   - the key registry (KeyEntry, one per database path): under g_keys_mu, except the
**     pending-encryption count (atomic) and the key itself, which cannot change while a
**     main file holds the entry open (see struct KeyEntry);
**   - the WAL-index objects (ShmObj): under g_shm_mu;
**   - the counters of heliosdb_stats: relaxed atomics;
**   - g_root and g_vfs: set once, before g_registered is published.
** The last error is per thread. `make stress` runs tests/test_vfs_race.py, a multi-
** threaded workload under valgrind's helgrind that fails on any race reported here.
**
** Preconditions are assert()ed, in the manner of cksumvfs.c: they hold in every build
** and are checked where NDEBUG is off (HELIOSDB_NATIVE_ASSERTS=1, csrc/build_native.py).
**
** Python API (csrc/vfs.cdef): heliosdb_key_register / _addref / _unregister / _info,
** heliosdb_full_pathname, heliosdb_last_error, heliosdb_page_encrypt / _decrypt (the
** known-answer tests), heliosdb_gcm_encrypt_raw (NIST vectors), heliosdb_stats (its
** counters are indexed by enum heliosdb_stat in vfs_api.h, which names them for Python).
*/
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

#include <assert.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "vfs_api.h"

#define HDB_VFS_NAME "heliosdb"
#define HDB_HDR_SIZE 4096
#define HDB_FORMAT_VERSION 1
#define HDB_MAGIC "HeliosDB\0" "enc\0\0\0\0" /* 16 bytes; split so no hex escape eats "e" */
#define HDB_MAGIC_LEN 16
#define HDB_OFF_VERSION 16
#define HDB_OFF_FILE_ID 32
#define HDB_OFF_PAGE_SIZE 48
#define HDB_OFF_COUNTER 56
#define HDB_NONCE 12
#define HDB_TAG 16
#define HDB_OVERHEAD (HDB_NONCE + HDB_TAG)
#define HDB_AAD_LEN 29
#define HDB_MAX_PAGE 65536
#define HDB_P1_RETRIES 8

enum { K_MAIN = 1, K_JOURNAL, K_WAL, K_TEMP, K_PLAIN };
enum { D_MAIN = 0, D_JOURNAL = 1, D_WAL = 2 };

/* ---------------------------------------------------------------- statistics --- */
/* Indexed by enum heliosdb_stat (vfs_api.h), which names them for Python too. Relaxed
** atomics: each counter is exact, no order between counters is promised. */
static long long g_stats[HELIOSDB_STAT_COUNT];
#define STAT_ADD(i, n) __atomic_add_fetch(&g_stats[i], (n), __ATOMIC_RELAXED)

/* ---------------------------------------------------------- per-thread error --- */
typedef struct {
  int set;
  long long page;
  char file[512];
  char msg[256];
} LastError;
static __thread LastError t_err;

static void set_error(const char *zFile, long long page, const char *zMsg) {
  t_err.set = 1;
  t_err.page = page;
  snprintf(t_err.file, sizeof t_err.file, "%s", zFile ? zFile : "");
  snprintf(t_err.msg, sizeof t_err.msg, "%s", zMsg);
}

int heliosdb_last_error(char *zFile, int nFile, char *zMsg, int nMsg, long long *page) {
  if (!t_err.set) return 0;
  if (zFile && nFile > 0) snprintf(zFile, (size_t)nFile, "%s", t_err.file);
  if (zMsg && nMsg > 0) snprintf(zMsg, (size_t)nMsg, "%s", t_err.msg);
  if (page) *page = t_err.page;
  return 1;
}

void heliosdb_clear_last_error(void) { t_err.set = 0; }

/* Copy the first n counters (at most HELIOSDB_STAT_COUNT) into out. */
void heliosdb_stats(long long *out, int n) {
  assert(out != 0 || n <= 0);
  for (int i = 0; i < n && i < HELIOSDB_STAT_COUNT; i++)
    out[i] = __atomic_load_n(&g_stats[i], __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------ key registry --- */
/* One entry per registered database path, shared by every thread and connection of the
** process. Who may touch what (see "Threads" in the manual above):
**   next, zPath, nReg, nOpen, pgsz, hdrPages: read and written only under g_keys_mu;
**   pending: atomic (__atomic_*), without the mutex, on the page-write path;
**   dek, fid: written under g_keys_mu, and then only while nOpen == 0; so a main file
**     that holds an open reference (nOpen counts it) may read them without the mutex:
**     they cannot change until it closes. entry_is_open() asserts that. */
typedef struct KeyEntry KeyEntry;
struct KeyEntry {
  KeyEntry *next;
  char *zPath;
  unsigned char dek[32];
  unsigned char fid[16];
  int nReg;            /* registrations from Python */
  int nOpen;           /* open main files using it */
  long long pending;   /* encryptions not yet added to the header counter */
  int pgsz;            /* last page size seen on page 1 */
  long long hdrPages;  /* database size in pages from the last page 1 seen */
};

/* Version 2: a WAL index in POSIX shared memory, shared by the main files of this
** process that open one database file (guarded by g_shm_mu). */
typedef struct ShmObj ShmObj;
struct ShmObj {
  ShmObj *next;
  char name[64];
  int ref;             /* main files of this process that mapped it */
  int fd;
  int nRegion, szRegion;
  void **apRegion;
};
static ShmObj *g_shm = 0;
static KeyEntry *g_keys = 0;
static pthread_mutex_t g_keys_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_shm_mu = PTHREAD_MUTEX_INITIALIZER;

/* Callers hold g_keys_mu. */
static KeyEntry *find_entry(const char *zPath) {
  assert(zPath != 0);
  for (KeyEntry *e = g_keys; e; e = e->next)
    if (strcmp(e->zPath, zPath) == 0) return e;
  return 0;
}

static void free_entry_locked(KeyEntry *e) {
  assert(e->nReg == 0 && e->nOpen == 0);
  KeyEntry **pp = &g_keys;
  while (*pp && *pp != e) pp = &(*pp)->next;
  if (*pp) *pp = e->next;
  OPENSSL_cleanse(e->dek, sizeof e->dek);
  free(e->zPath);
  free(e);
}

/* Register (or add a reference to) the key of the database at zPath. Returns 0, or 1
** when another key is registered for that path and a file is open with it. */
int heliosdb_key_register(const char *zPath, const unsigned char *dek,
                          const unsigned char *file_id) {
  int rc = 0;
  pthread_mutex_lock(&g_keys_mu);
  KeyEntry *e = find_entry(zPath);
  if (e && (memcmp(e->dek, dek, 32) != 0 || memcmp(e->fid, file_id, 16) != 0)) {
    if (e->nOpen > 0) {
      rc = 1;
      goto done;
    }
    /* The file was replaced since: the new key wins, old registrations carry over. */
    memcpy(e->dek, dek, 32);
    memcpy(e->fid, file_id, 16);
    __atomic_store_n(&e->pending, 0, __ATOMIC_RELAXED);
  }
  if (!e) {
    e = calloc(1, sizeof *e);
    if (!e || !(e->zPath = strdup(zPath))) {
      free(e);
      rc = 2;
      goto done;
    }
    memcpy(e->dek, dek, 32);
    memcpy(e->fid, file_id, 16);
    e->next = g_keys;
    g_keys = e;
  }
  e->nReg++;
done:
  pthread_mutex_unlock(&g_keys_mu);
  return rc;
}

/* Drop one registration; the key is wiped once no registration or open file uses it. */
int heliosdb_key_unregister(const char *zPath) {
  pthread_mutex_lock(&g_keys_mu);
  KeyEntry *e = find_entry(zPath);
  int rc = e ? 0 : 1;
  if (e && e->nReg > 0) e->nReg--;
  if (e && e->nReg == 0 && e->nOpen == 0) free_entry_locked(e);
  pthread_mutex_unlock(&g_keys_mu);
  return rc;
}

/* What the registry knows of zPath: 1 and the outputs set, or 0 when no key is
** registered. Safe from any thread while others read and write the file. */
int heliosdb_key_info(const char *zPath, long long *pending, int *page_size,
                      long long *hdr_db_pages) {
  pthread_mutex_lock(&g_keys_mu);
  KeyEntry *e = find_entry(zPath);
  if (e) {
    if (pending) *pending = __atomic_load_n(&e->pending, __ATOMIC_RELAXED);
    if (page_size) *page_size = e->pgsz;
    if (hdr_db_pages) *hdr_db_pages = e->hdrPages;
  }
  pthread_mutex_unlock(&g_keys_mu);
  return e ? 1 : 0;
}

/* Page 1 was read or written: keep its page size and database size for key_info. Two
** connections to one file share the entry, and key_info reads it from any thread. */
static void entry_note_page1(KeyEntry *e, int pgsz, long long dbPages) {
  pthread_mutex_lock(&g_keys_mu);
  assert(e->nOpen > 0);
  e->pgsz = pgsz;
  e->hdrPages = dbPages;
  pthread_mutex_unlock(&g_keys_mu);
}

#ifndef NDEBUG
/* For assert() only: does an open main file hold e (so that its dek and fid are fixed)? */
static int entry_is_open(KeyEntry *e) {
  pthread_mutex_lock(&g_keys_mu);
  int n = e->nOpen;
  pthread_mutex_unlock(&g_keys_mu);
  return n > 0;
}
#endif

/* ---------------------------------------------------------- page transform --- */
static void put_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);  p[3] = (unsigned char)v;
}
static uint32_t get_be32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void make_aad(unsigned char *aad, const unsigned char *fid, int domain, uint32_t pgno) {
  assert(domain == D_MAIN || domain == D_JOURNAL || domain == D_WAL);
  memcpy(aad, "HDB1", 4);
  memcpy(aad + 4, fid, 16);
  put_be32(aad + 20, HDB_FORMAT_VERSION);
  aad[24] = (unsigned char)domain;
  put_be32(aad + 25, pgno);
}

static int valid_page_size(sqlite3_int64 n);

/* enc must be an AES-256-GCM encryption context with its key set. out != in. */
static int gcm_seal(EVP_CIPHER_CTX *enc, const unsigned char *fid, int domain, uint32_t pgno,
                    const unsigned char *nonce, const unsigned char *in, unsigned char *out,
                    int pgsz) {
  assert(enc != 0 && fid != 0 && nonce != 0 && in != 0 && out != 0 && out != in);
  assert(valid_page_size(pgsz));
  unsigned char aad[HDB_AAD_LEN];
  int n = pgsz - HDB_OVERHEAD, len = 0;
  make_aad(aad, fid, domain, pgno);
  if (EVP_EncryptInit_ex(enc, NULL, NULL, NULL, nonce) != 1) return 0;
  if (EVP_EncryptUpdate(enc, NULL, &len, aad, HDB_AAD_LEN) != 1) return 0;
  if (EVP_EncryptUpdate(enc, out, &len, in, n) != 1) return 0;
  if (EVP_EncryptFinal_ex(enc, out + len, &len) != 1) return 0;
  memcpy(out + n, nonce, HDB_NONCE);
  if (EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_GCM_GET_TAG, HDB_TAG, out + n + HDB_NONCE) != 1)
    return 0;
  STAT_ADD(HELIOSDB_STAT_PAGE_ENCRYPTIONS, 1);
  return 1;
}

/* dec: AES-256-GCM decryption context with its key set. in may equal out. */
static int gcm_open(EVP_CIPHER_CTX *dec, const unsigned char *fid, int domain, uint32_t pgno,
                    const unsigned char *in, unsigned char *out, int pgsz) {
  assert(dec != 0 && fid != 0 && in != 0 && out != 0);
  assert(valid_page_size(pgsz));
  unsigned char aad[HDB_AAD_LEN], nt[HDB_OVERHEAD];
  int n = pgsz - HDB_OVERHEAD, len = 0;
  memcpy(nt, in + n, HDB_OVERHEAD); /* in may be overwritten in place */
  make_aad(aad, fid, domain, pgno);
  STAT_ADD(HELIOSDB_STAT_PAGE_DECRYPTIONS, 1);
  if (EVP_DecryptInit_ex(dec, NULL, NULL, NULL, nt) != 1) return 0;
  if (EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_GCM_SET_TAG, HDB_TAG, nt + HDB_NONCE) != 1) return 0;
  if (EVP_DecryptUpdate(dec, NULL, &len, aad, HDB_AAD_LEN) != 1) return 0;
  if (EVP_DecryptUpdate(dec, out, &len, in, n) != 1) return 0;
  if (EVP_DecryptFinal_ex(dec, out + len, &len) != 1) {
    STAT_ADD(HELIOSDB_STAT_AUTH_FAILURES, 1);
    return 0;
  }
  /* The reserved bytes read back as zeros, never as nonce and tag: SQLite's copy of a
  ** page must be what it will write back, since WAL frame checksums cover the whole
  ** page as SQLite wrote it and are recomputed over what xRead returns at recovery. */
  memset(out + n, 0, HDB_OVERHEAD);
  return 1;
}

static EVP_CIPHER_CTX *new_ctx(const EVP_CIPHER *c, const unsigned char *key, int enc) {
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  if (!x) return 0;
  if (EVP_CipherInit_ex(x, c, NULL, key, NULL, enc) != 1) {
    EVP_CIPHER_CTX_free(x);
    return 0;
  }
  return x;
}

static int valid_page_size(sqlite3_int64 n) {
  return n >= 512 && n <= HDB_MAX_PAGE && (n & (n - 1)) == 0;
}

/* Known-answer entry points for the tests (one-shot contexts). Return 1 on success. */
int heliosdb_page_encrypt(const unsigned char *dek, const unsigned char *file_id, int domain,
                          uint32_t pgno, const unsigned char *nonce, const unsigned char *in,
                          unsigned char *out, int page_size) {
  if (!valid_page_size(page_size)) return 0;
  EVP_CIPHER_CTX *c = new_ctx(EVP_aes_256_gcm(), dek, 1);
  if (!c) return 0;
  int ok = gcm_seal(c, file_id, domain, pgno, nonce, in, out, page_size);
  EVP_CIPHER_CTX_free(c);
  return ok;
}

int heliosdb_page_decrypt(const unsigned char *dek, const unsigned char *file_id, int domain,
                          uint32_t pgno, const unsigned char *in, unsigned char *out,
                          int page_size) {
  if (!valid_page_size(page_size)) return 0;
  EVP_CIPHER_CTX *c = new_ctx(EVP_aes_256_gcm(), dek, 0);
  if (!c) return 0;
  int ok = gcm_open(c, file_id, domain, pgno, in, out, page_size);
  EVP_CIPHER_CTX_free(c);
  return ok;
}

/* ---------------------------------------------------------------- the VFS --- */
typedef struct HFile HFile;
struct HFile {
  sqlite3_file base;
  int kind;
  const char *zName;          /* SQLite's name (valid while open), for error text */
  KeyEntry *entry;            /* main file: its registry entry */
  HFile *pMain;               /* journal / WAL: the main database file */
  unsigned char fid[16];
  EVP_CIPHER_CTX *enc, *dec;  /* GCM (main/journal/WAL) or CTR (temp, enc only) */
  unsigned char *buf;         /* scratch */
  int nBuf;
  int pgsz;                   /* main: page size; WAL: WAL page size (0 = unknown) */
  int reserveOk;              /* main: page 1 seen with >= 28 reserved bytes */
  int lockLevel;              /* main: the lock this handle holds */
  int pgszDirty;              /* main: header page size to rewrite at next sync */
  unsigned char *p1c, *p1p;   /* main: cached page 1 ciphertext and plaintext */
  unsigned char *sub;         /* main: page buffer for sub-page reads (plaintext) */
  int p1sz;
  sqlite3_int64 last4Off;     /* journal/WAL: last 4-byte I/O (pgno tracking) */
  uint32_t last4Val;
  int have4;
  unsigned char ctrPrefix[8]; /* temp: random IV prefix */
  int sealCk;                 /* main: header version >= 2, checksums are sealed */
  ShmObj *shm;                /* main (sealCk): the WAL index this handle maps */
  EVP_CIPHER_CTX *ck;         /* journal/WAL (sealCk): AES-256-ECB under the seal key */
  sqlite3_int64 jPageEnd;     /* journal: end of the page image just read or written */
  unsigned char jNonce[HDB_NONCE]; /* journal: that page image's GCM nonce */
  sqlite3_file *pReal;        /* the underlying file, allocated right after this */
};

/* Set once, by sqlite3_heliosdb_init under its mutex, before g_registered is published
** (release store): SQLite reaches the VFS methods only through sqlite3_vfs_register,
** which publishes g_vfs and g_root under SQLite's own mutex; Python's calls check
** g_registered (acquire load) first. */
static sqlite3_vfs *g_root = 0;
static sqlite3_vfs g_vfs;
static int g_registered = 0;
static const sqlite3_io_methods g_io;

#define REAL(p) ((p)->pReal)

int heliosdb_vfs_registered(void) { return __atomic_load_n(&g_registered, __ATOMIC_ACQUIRE); }

/* The full pathname the default VFS gives zIn (the registry's key); SQLITE_MISUSE before
** the extension is loaded. */
int heliosdb_full_pathname(const char *zIn, char *zOut, int nOut) {
  if (!heliosdb_vfs_registered()) return SQLITE_MISUSE;
  assert(g_root != 0 && zIn != 0 && zOut != 0 && nOut > 0);
  return g_root->xFullPathname(g_root, zIn, nOut, zOut);
}

static int ensure_buf(HFile *p, int n) {
  assert(n > 0);
  if (p->nBuf >= n) return 1;
  unsigned char *b = malloc((size_t)n);
  if (!b) return 0;
  if (p->buf) {
    OPENSSL_cleanse(p->buf, (size_t)p->nBuf);
    free(p->buf);
  }
  p->buf = b;
  p->nBuf = n;
  return 1;
}

static int all_zero_bytes(const unsigned char *p, int n) {
  for (int i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

/* Is a stored page all zeros? A sealed page's random nonce is all zeros with chance
** 2^-96, so the 28-byte trailer decides quickly and the full scan runs almost never. */
static int all_zero(const unsigned char *p, int n) {
  return all_zero_bytes(p + n - HDB_OVERHEAD, HDB_OVERHEAD) && all_zero_bytes(p, n);
}

static const char *fname(HFile *p) { return p->zName ? p->zName : "(temp file)"; }

static int corrupt(HFile *p, long long page, const char *what) {
  char msg[200];
  snprintf(msg, sizeof msg, "%s", what);
  set_error(fname(p), page, msg);
  return SQLITE_IOERR_DATA;
}

/* -- main database ------------------------------------------------------------- */

/* Bytes of the real file from offset off (for deciding short reads). */
static sqlite3_int64 real_avail(HFile *p, sqlite3_int64 off) {
  sqlite3_int64 sz = 0;
  if (REAL(p)->pMethods->xFileSize(REAL(p), &sz) != SQLITE_OK) return 0;
  return sz > off ? sz - off : 0;
}

/* Keep page 1 of size P as stored (cipher, P bytes) and as SQLite sees it (plain: its
** first P - 28 bytes; the reserved bytes read as zeros, as gcm_open returns them). On
** allocation failure the cache is simply empty: page 1 is then decrypted at each read. */
static void p1_cache_store(HFile *p, const unsigned char *cipher, const unsigned char *plain,
                           int P) {
  assert(p->kind == K_MAIN && valid_page_size(P));
  assert(cipher != p->p1c && plain != p->p1p);
  if (p->p1sz != P) {
    free(p->p1c);
    if (p->p1p) OPENSSL_cleanse(p->p1p, (size_t)p->p1sz);
    free(p->p1p);
    p->p1c = malloc((size_t)P);
    p->p1p = malloc((size_t)P);
    p->p1sz = (p->p1c && p->p1p) ? P : 0;
  }
  if (p->p1sz != P) return;
  memcpy(p->p1c, cipher, (size_t)P);
  memcpy(p->p1p, plain, (size_t)P - HDB_OVERHEAD);
  memset(p->p1p + P - HDB_OVERHEAD, 0, HDB_OVERHEAD);
}

/* Read and authenticate page pgno of size P into out (P bytes). */
static int main_read_page_once(HFile *p, uint32_t pgno, int P, unsigned char *out) {
  assert(p->kind == K_MAIN && p->entry != 0 && p->dec != 0);
  assert(pgno >= 1 && valid_page_size(P) && out != 0);
  sqlite3_int64 off = HDB_HDR_SIZE + (sqlite3_int64)(pgno - 1) * P;
  if (pgno == 1 && p->p1c && p->p1sz == P) {
    /* SQLite re-reads page 1 at the start of every read transaction. Every write of a
    ** page draws a fresh random nonce, so an unchanged nonce and tag mean an unchanged
    ** page: serve the plaintext authenticated earlier. Never unauthenticated data: a
    ** page changed behind an unchanged tag is served as it was when it authenticated. */
    unsigned char t[HDB_OVERHEAD];
    if (REAL(p)->pMethods->xRead(REAL(p), t, HDB_OVERHEAD, off + P - HDB_OVERHEAD) == SQLITE_OK &&
        memcmp(t, p->p1c + P - HDB_OVERHEAD, HDB_OVERHEAD) == 0) {
      memcpy(out, p->p1p, (size_t)P);
      STAT_ADD(HELIOSDB_STAT_PAGE1_CACHE_HITS, 1);
      return SQLITE_OK;
    }
  }
  int rc = REAL(p)->pMethods->xRead(REAL(p), out, P, off);
  if (rc == SQLITE_IOERR_SHORT_READ) {
    if (real_avail(p, off) == 0) {
      /* A new, empty database: SQLite may spill pages 2.. before it writes page 1; the
      ** reserve of the new database is checked when page 1 is written, and the whole
      ** transaction rolls back (truncating what was spilled) if it is too small. */
      if (pgno == 1) p->reserveOk = 1;
      memset(out, 0, (size_t)P);
      return SQLITE_IOERR_SHORT_READ;
    }
    return corrupt(p, pgno, "the page is truncated");
  }
  if (rc != SQLITE_OK) return rc;
  if (all_zero(out, P)) return corrupt(p, pgno, "the page is all zeros");
  if (!ensure_buf(p, P)) return SQLITE_NOMEM;
  if (pgno == 1) memcpy(p->buf, out, (size_t)P); /* ciphertext, for the cache */
  if (!gcm_open(p->dec, p->fid, D_MAIN, pgno, out, out, P))
    return corrupt(p, pgno, "the page failed authentication (wrong data for this key, "
                            "tampered with, or from another position or file)");
  if (pgno == 1) {
    if (out[20] >= HDB_OVERHEAD) p->reserveOk = 1;
    p1_cache_store(p, p->buf, out, P);
    entry_note_page1(p->entry, P, get_be32(out + 28));
  }
  return SQLITE_OK;
}

/* Page 1 is read without a lock: retry a failed authentication, since another process
** may be writing it at this moment (a torn read is not a wrong key nor corruption). */
static int main_read_page(HFile *p, uint32_t pgno, int P, unsigned char *out) {
  int rc = main_read_page_once(p, pgno, P, out);
  for (int i = 0; rc == SQLITE_IOERR_DATA && pgno == 1 && i < HDB_P1_RETRIES; i++) {
    STAT_ADD(HELIOSDB_STAT_PAGE1_RETRIES, 1);
    g_root->xSleep(g_root, 1000 * (i + 1));
    rc = main_read_page_once(p, pgno, P, out);
  }
  if (rc == SQLITE_OK) heliosdb_clear_last_error();
  return rc;
}

static int main_read(HFile *p, void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  assert(p->kind == K_MAIN && zBuf != 0 && iAmt > 0 && iOfst >= 0);
  if (valid_page_size(iAmt) && iOfst % iAmt == 0) {
    int rc = main_read_page(p, (uint32_t)(iOfst / iAmt) + 1, iAmt, zBuf);
    if (rc == SQLITE_OK && iOfst == 0) p->pgsz = iAmt;
    return rc;
  }
  /* A part of one page: SQLite's reads of the database header in page 1. */
  int P = p->pgsz;
  assert(valid_page_size(P)); /* open_main sets it, every later write keeps it valid */
  uint32_t pgno = (uint32_t)(iOfst / P) + 1;
  if (!p->sub) {
    p->sub = malloc(HDB_MAX_PAGE); /* one page-sized buffer per main file */
    if (!p->sub) return SQLITE_NOMEM;
  }
  unsigned char *page = p->sub;
  int rc = main_read_page(p, pgno, P, page); /* retries a torn page 1 */
  if (rc == SQLITE_IOERR_DATA && pgno == 1) {
    /* The page size field may be stale (a damaged or older header): probe the others. */
    for (int q = 512; q <= HDB_MAX_PAGE; q *= 2) {
      if (q == P || main_read_page_once(p, 1, q, page) != SQLITE_OK) continue;
      p->pgsz = P = q;
      p->pgszDirty = 1;
      rc = SQLITE_OK;
      heliosdb_clear_last_error();
      break;
    }
    if (rc != SQLITE_OK) {
      /* Report the failure at the recorded size, not the last probe's. */
      heliosdb_clear_last_error();
      rc = main_read_page_once(p, 1, P, page);
    }
  }
  int inPage = (int)(iOfst - (sqlite3_int64)(pgno - 1) * P);
  if ((rc == SQLITE_OK || rc == SQLITE_IOERR_SHORT_READ)) {
    if (inPage < 0 || inPage + iAmt > P) {
      set_error(fname(p), pgno, "read across a page boundary refused by the encrypting VFS");
      rc = SQLITE_IOERR_READ;
    } else {
      memcpy(zBuf, page + inPage, (size_t)iAmt);
    }
  }
  return rc;
}

static int main_write(HFile *p, const void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  assert(p->kind == K_MAIN && p->entry != 0 && p->enc != 0);
  assert(zBuf != 0 && iAmt > 0 && iOfst >= 0);
  const unsigned char *in = zBuf;
  if (!valid_page_size(iAmt) || iOfst % iAmt != 0) {
    set_error(fname(p), iOfst / (p->pgsz ? p->pgsz : 4096) + 1,
              "write that is not one whole page refused by the encrypting VFS");
    return SQLITE_IOERR_WRITE;
  }
  uint32_t pgno = (uint32_t)(iOfst / iAmt) + 1;
  if (pgno == 1) {
    int hdrP = in[16] * 256 + in[17];
    if (hdrP == 1) hdrP = 65536;
    if (hdrP != iAmt) {
      /* SQLite changes the page size of an existing database (VACUUM after PRAGMA
      ** page_size) by copying the new pages in units of the old size: such a unit has no
      ** reserved bytes of its own to seal. Refuse before anything is written; the
      ** transaction rolls back. VACUUM INTO a new encrypted file does work. */
      set_error(fname(p), 1, "changing the page size of an encrypted database in place is "
                             "not supported: VACUUM INTO a new encrypted database instead");
      return SQLITE_IOERR_WRITE;
    }
    if (in[20] < HDB_OVERHEAD) {
      set_error(fname(p), 1, "page 1 has fewer than 28 reserved bytes: the database was "
                             "not created by heliosdb.crypto (SQLITE_FCNTL_RESERVE_BYTES)");
      return SQLITE_IOERR_WRITE;
    }
    p->reserveOk = 1;
    if (p->pgsz != iAmt) {
      p->pgsz = iAmt;
      p->pgszDirty = 1;
    }
    entry_note_page1(p->entry, iAmt, get_be32(in + 28));
  } else if (!p->reserveOk) {
    set_error(fname(p), pgno, "page written before page 1 was seen");
    return SQLITE_IOERR_WRITE;
  }
  unsigned char nonce[HDB_NONCE];
  if (RAND_bytes(nonce, HDB_NONCE) != 1) return SQLITE_IOERR_WRITE;
  if (!ensure_buf(p, iAmt)) return SQLITE_NOMEM;
  if (!gcm_seal(p->enc, p->fid, D_MAIN, pgno, nonce, in, p->buf, iAmt)) return SQLITE_IOERR_WRITE;
  __atomic_add_fetch(&p->entry->pending, 1, __ATOMIC_RELAXED);
  int rc = REAL(p)->pMethods->xWrite(REAL(p), p->buf, iAmt, HDB_HDR_SIZE + iOfst);
  if (rc == SQLITE_OK && pgno == 1) p1_cache_store(p, p->buf, in, iAmt);
  return rc;
}

/* Add this process's pending encryptions (and a new page size) to the header. Called
** from xSync of the main file, i.e. under SQLite's write or checkpoint lock. */
static int main_flush_header(HFile *p) {
  assert(p->kind == K_MAIN && p->entry != 0);
  long long d = __atomic_exchange_n(&p->entry->pending, 0, __ATOMIC_RELAXED);
  if (d == 0 && !p->pgszDirty) return SQLITE_OK;
  unsigned char h[16];
  int rc = REAL(p)->pMethods->xRead(REAL(p), h, 16, HDB_OFF_PAGE_SIZE);
  if (rc != SQLITE_OK) {
    __atomic_add_fetch(&p->entry->pending, d, __ATOMIC_RELAXED);
    return rc;
  }
  if (p->pgszDirty && p->pgsz) put_be32(h, (uint32_t)p->pgsz);
  unsigned long long c = ((unsigned long long)get_be32(h + 8) << 32) | get_be32(h + 12);
  c += (unsigned long long)d;
  put_be32(h + 8, (uint32_t)(c >> 32));
  put_be32(h + 12, (uint32_t)c);
  rc = REAL(p)->pMethods->xWrite(REAL(p), h, 16, HDB_OFF_PAGE_SIZE);
  if (rc == SQLITE_OK) p->pgszDirty = 0;
  else __atomic_add_fetch(&p->entry->pending, d, __ATOMIC_RELAXED);
  return rc;
}

/* -- journal and WAL -------------------------------------------------------------- */

/* Checksum sealing (header version 2). SQLite computes the WAL frame checksums and the
** rollback-journal record checksums over the *plaintext* page; stored as they are they
** let anyone test a guess of a page without the key (a 4-digit PIN was recovered from a
** -wal file alone). They are stored XORed with a keystream:
**   Kw = HMAC-SHA256(DEK, "HeliosDB WAL checksum seal v2" || file id)
**   Kj = HMAC-SHA256(DEK, "HeliosDB journal checksum seal v2" || file id)
**   WAL frame at offset h:  stored[16..23] = cksum XOR AES-256(Kw, be64(h) || salt1 || salt2)[0..7]
**   journal record checksum at offset c, page image nonce N (12 bytes):
**                           stored = cksum XOR AES-256(Kj, be32(c mod 2^32) || N)[0..3]
** and opened again on read, so SQLite still sees and verifies its own checksums. The
** salts come from the frame's own header, so each WAL generation has its own keystream;
** the journal keystream is bound to the fresh random nonce of the record's page image.
** heliosdb/crypto/seal.py implements the same for the offline verifier and the tests. */
static EVP_CIPHER_CTX *seal_ctx(const unsigned char *dek, const unsigned char *fid,
                                const char *label) {
  unsigned char msg[64], k[32];
  unsigned int klen = 0;
  size_t n = strlen(label);
  memcpy(msg, label, n);
  memcpy(msg + n, fid, 16);
  if (!HMAC(EVP_sha256(), dek, 32, msg, n + 16, k, &klen) || klen != 32) return 0;
  EVP_CIPHER_CTX *x = new_ctx(EVP_aes_256_ecb(), k, 1);
  OPENSSL_cleanse(k, sizeof k);
  if (x) EVP_CIPHER_CTX_set_padding(x, 0);
  return x;
}

static int seal_block(EVP_CIPHER_CTX *x, const unsigned char in[16], unsigned char out[16]) {
  int len = 0;
  return EVP_EncryptUpdate(x, out, &len, in, 16) == 1 && len == 16;
}

/* XOR the sealing keystream into the checksum bytes of every WAL frame header that the
** n bytes of buf (file offset off) overlap. Salts not in buf are read from the file. */
static int wal_xor_cksums(HFile *p, unsigned char *buf, sqlite3_int64 off, sqlite3_int64 n,
                          int P) {
  assert(p->kind == K_WAL && p->ck != 0 && valid_page_size(P) && off >= 0 && n >= 0);
  sqlite3_int64 szF = 24 + (sqlite3_int64)P, end = off + n;
  for (sqlite3_int64 k = off < 32 ? 0 : (off - 32) / szF;; k++) {
    sqlite3_int64 h = 32 + k * szF, c0 = h + 16, c1 = h + 24;
    if (c0 >= end) break;
    if (c1 <= off) continue;
    unsigned char blk[16], ks[16];
    for (int i = 0; i < 8; i++) blk[i] = (unsigned char)((uint64_t)h >> (56 - 8 * i));
    if (h + 8 >= off && h + 16 <= end) {
      memcpy(blk + 8, buf + (h + 8 - off), 8);
    } else {
      int rc = REAL(p)->pMethods->xRead(REAL(p), blk + 8, 8, h + 8);
      if (rc == SQLITE_IOERR_SHORT_READ) memset(blk + 8, 0, 8); /* no such frame yet */
      else if (rc != SQLITE_OK) return rc;
    }
    if (!seal_block(p->ck, blk, ks)) return SQLITE_IOERR;
    for (sqlite3_int64 b = c0 > off ? c0 : off; b < c1 && b < end; b++)
      buf[b - off] ^= ks[b - c0];
  }
  return SQLITE_OK;
}

static int journal_xor_cksum(HFile *p, unsigned char *four, sqlite3_int64 off) {
  assert(p->kind == K_JOURNAL && p->ck != 0);
  unsigned char blk[16], ks[16];
  put_be32(blk, (uint32_t)off);
  memcpy(blk + 4, p->jNonce, HDB_NONCE);
  if (!seal_block(p->ck, blk, ks)) return 0;
  for (int i = 0; i < 4; i++) four[i] ^= ks[i];
  return 1;
}

/* The pgno stored at off: from the last 4-byte I/O of this handle when useCache (the
** pager writes or reads a record's pgno just before its page), else from the file. */
static int side_pgno_at(HFile *p, sqlite3_int64 off, uint32_t *pg, int useCache) {
  if (useCache && p->have4 && p->last4Off == off) {
    *pg = p->last4Val;
    return SQLITE_OK;
  }
  unsigned char b[4];
  int rc = REAL(p)->pMethods->xRead(REAL(p), b, 4, off);
  if (rc != SQLITE_OK) return rc == SQLITE_IOERR_SHORT_READ ? SQLITE_IOERR_DATA : rc;
  *pg = get_be32(b);
  return SQLITE_OK;
}

static void note4(HFile *p, const void *buf, int amt, sqlite3_int64 off) {
  if (amt == 4) {
    p->have4 = 1;
    p->last4Off = off;
    p->last4Val = get_be32(buf);
  }
}

static int journal_is_page(int amt, sqlite3_int64 off) {
  return valid_page_size(amt) && off % 8 == 4 && off >= 4;
}

static int journal_read(HFile *p, void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  assert(p->kind == K_JOURNAL && p->pMain != 0 && p->dec != 0);
  sqlite3_int64 pageEnd = p->jPageEnd;
  p->jPageEnd = -1;
  int rc = REAL(p)->pMethods->xRead(REAL(p), zBuf, iAmt, iOfst);
  if (rc != SQLITE_OK) return rc;
  if (p->ck && iAmt == 4 && iOfst == pageEnd) {
    /* The checksum of the record whose page image was just read. */
    if (!journal_xor_cksum(p, zBuf, iOfst)) return SQLITE_IOERR_READ;
    return SQLITE_OK;
  }
  note4(p, zBuf, iAmt, iOfst);
  if (!journal_is_page(iAmt, iOfst)) return SQLITE_OK;
  uint32_t pg;
  if ((rc = side_pgno_at(p, iOfst - 4, &pg, 1)) != SQLITE_OK) return rc;
  if (all_zero(zBuf, iAmt)) return corrupt(p, pg, "journal record for page is all zeros");
  memcpy(p->jNonce, (unsigned char *)zBuf + iAmt - HDB_OVERHEAD, HDB_NONCE);
  if (!gcm_open(p->dec, p->fid, D_JOURNAL, pg, zBuf, zBuf, iAmt))
    return corrupt(p, pg, "journal record for page failed authentication");
  p->jPageEnd = iOfst + iAmt;
  return SQLITE_OK;
}

static int journal_write(HFile *p, const void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  assert(p->kind == K_JOURNAL && p->pMain != 0 && p->enc != 0);
  sqlite3_int64 pageEnd = p->jPageEnd;
  p->jPageEnd = -1;
  if (p->ck && iAmt == 4 && iOfst == pageEnd) {
    /* The checksum of the record whose page image was just written. */
    unsigned char four[4];
    memcpy(four, zBuf, 4);
    if (!journal_xor_cksum(p, four, iOfst)) return SQLITE_IOERR_WRITE;
    return REAL(p)->pMethods->xWrite(REAL(p), four, 4, iOfst);
  }
  if (!journal_is_page(iAmt, iOfst)) {
    note4(p, zBuf, iAmt, iOfst);
    return REAL(p)->pMethods->xWrite(REAL(p), zBuf, iAmt, iOfst);
  }
  uint32_t pg;
  int rc = side_pgno_at(p, iOfst - 4, &pg, 1);
  if (rc != SQLITE_OK) return rc;
  unsigned char nonce[HDB_NONCE];
  if (RAND_bytes(nonce, HDB_NONCE) != 1) return SQLITE_IOERR_WRITE;
  if (!ensure_buf(p, iAmt)) return SQLITE_NOMEM;
  if (!gcm_seal(p->enc, p->fid, D_JOURNAL, pg, nonce, zBuf, p->buf, iAmt)) return SQLITE_IOERR_WRITE;
  __atomic_add_fetch(&p->pMain->entry->pending, 1, __ATOMIC_RELAXED);
  rc = REAL(p)->pMethods->xWrite(REAL(p), p->buf, iAmt, iOfst);
  if (rc == SQLITE_OK) {
    memcpy(p->jNonce, nonce, HDB_NONCE);
    p->jPageEnd = iOfst + iAmt;
  }
  return rc;
}

static int wal_page_size(HFile *p) {
  assert(p->kind == K_WAL && p->pMain != 0);
  if (p->pgsz) return p->pgsz;
  unsigned char h[32];
  if (REAL(p)->pMethods->xRead(REAL(p), h, 32, 0) == SQLITE_OK) {
    uint32_t v = get_be32(h + 8);
    if (valid_page_size(v)) return p->pgsz = (int)v;
  }
  return p->pMain->pgsz;
}

/* For each frame's page region overlapping [off, off+amt): call back. */
static int wal_read(HFile *p, void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  assert(p->kind == K_WAL && p->dec != 0 && zBuf != 0 && iAmt > 0 && iOfst >= 0);
  unsigned char *buf = zBuf;
  int rc = REAL(p)->pMethods->xRead(REAL(p), zBuf, iAmt, iOfst);
  if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) return rc;
  int shortRead = rc == SQLITE_IOERR_SHORT_READ;
  sqlite3_int64 have = shortRead ? real_avail(p, iOfst) : iAmt;
  if (have > iAmt) have = iAmt;
  note4(p, zBuf, iAmt, iOfst);
  if (iOfst == 0 && have >= 32 && valid_page_size(get_be32(buf + 8))) p->pgsz = (int)get_be32(buf + 8);
  int P = wal_page_size(p);
  if (!P) return rc;
  if (p->ck && have > 0) {
    int r3 = wal_xor_cksums(p, buf, iOfst, have, P);
    if (r3 != SQLITE_OK) return r3;
  }
  sqlite3_int64 szF = 24 + (sqlite3_int64)P, end = iOfst + iAmt;
  sqlite3_int64 k = iOfst < 32 ? 0 : (iOfst - 32) / szF;
  for (;; k++) {
    sqlite3_int64 hOff = 32 + k * szF, pOff = hOff + 24;
    if (pOff >= end) break;
    if (pOff + P <= iOfst) continue;
    int lenient = hOff >= iOfst; /* the read includes the frame header: WAL recovery */
    uint32_t pg;
    if (lenient) pg = get_be32(buf + (hOff - iOfst));
    else if ((rc = side_pgno_at(p, hOff, &pg, 0)) != SQLITE_OK) return rc;
    if (pOff >= iOfst && pOff + P <= iOfst + have) {
      unsigned char *pp = buf + (pOff - iOfst);
      if (all_zero(pp, P) || !gcm_open(p->dec, p->fid, D_WAL, pg, pp, pp, P)) {
        if (lenient) memset(pp, 0, (size_t)P);
        else return corrupt(p, pg, "WAL frame for page failed authentication");
      }
    } else if (pOff >= iOfst + have) {
      /* Beyond end of file: zero fill stays (short read). */
      sqlite3_int64 a = pOff - iOfst, b = (pOff + P < end ? pOff + P : end) - iOfst;
      memset(buf + a, 0, (size_t)(b - a));
    } else {
      /* Partial overlap: authenticate the whole page, then copy the overlap. */
      if (!ensure_buf(p, P)) return SQLITE_NOMEM;
      int r2 = REAL(p)->pMethods->xRead(REAL(p), p->buf, P, pOff);
      if (r2 != SQLITE_OK || !gcm_open(p->dec, p->fid, D_WAL, pg, p->buf, p->buf, P)) {
        if (lenient) memset(p->buf, 0, (size_t)P);
        else return corrupt(p, pg, "WAL frame for page failed authentication");
      }
      sqlite3_int64 a = pOff > iOfst ? pOff : iOfst;
      sqlite3_int64 b = pOff + P < end ? pOff + P : end;
      memcpy(buf + (a - iOfst), p->buf + (a - pOff), (size_t)(b - a));
    }
  }
  return shortRead ? SQLITE_IOERR_SHORT_READ : SQLITE_OK;
}

static int wal_write(HFile *p, const void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  assert(p->kind == K_WAL && p->enc != 0 && zBuf != 0 && iAmt > 0 && iOfst >= 0);
  const unsigned char *in = zBuf;
  if (iOfst == 0 && iAmt >= 32 && valid_page_size(get_be32(in + 8))) p->pgsz = (int)get_be32(in + 8);
  int P = wal_page_size(p);
  sqlite3_int64 szF = 24 + (sqlite3_int64)P, end = iOfst + iAmt;
  int touched = 0;
  if (p->ck && P && end > 32 + 16) {
    /* Frame checksums in this write are sealed (a copy: zBuf is SQLite's). */
    if (!ensure_buf(p, iAmt)) return SQLITE_NOMEM;
    memcpy(p->buf, in, (size_t)iAmt);
    touched = 1;
    int r3 = wal_xor_cksums(p, p->buf, iOfst, iAmt, P);
    if (r3 != SQLITE_OK) return r3;
  }
  for (sqlite3_int64 k = iOfst < 32 ? 0 : (iOfst - 32) / szF; P; k++) {
    sqlite3_int64 hOff = 32 + k * szF, pOff = hOff + 24;
    if (pOff >= end) break;
    if (pOff + P <= iOfst) continue;
    if (pOff < iOfst || pOff + P > end) {
      set_error(fname(p), 0, "partial WAL page write refused by the encrypting VFS");
      return SQLITE_IOERR_WRITE;
    }
    if (!touched) {
      /* Frame headers are copied as they are; page contents are sealed over them. */
      if (!ensure_buf(p, iAmt)) return SQLITE_NOMEM;
      memcpy(p->buf, in, (size_t)iAmt);
      touched = 1;
    }
    uint32_t pg;
    int rc;
    if (hOff >= iOfst) pg = get_be32(in + (hOff - iOfst));
    else if ((rc = side_pgno_at(p, hOff, &pg, 1)) != SQLITE_OK) return rc;
    unsigned char nonce[HDB_NONCE];
    if (RAND_bytes(nonce, HDB_NONCE) != 1) return SQLITE_IOERR_WRITE;
    if (!gcm_seal(p->enc, p->fid, D_WAL, pg, nonce, in + (pOff - iOfst), p->buf + (pOff - iOfst), P))
      return SQLITE_IOERR_WRITE;
    __atomic_add_fetch(&p->pMain->entry->pending, 1, __ATOMIC_RELAXED);
  }
  if (iAmt == 24) note4(p, zBuf, 4, iOfst); /* a frame header starts with its pgno */
  if (!touched) return REAL(p)->pMethods->xWrite(REAL(p), zBuf, iAmt, iOfst);
  return REAL(p)->pMethods->xWrite(REAL(p), p->buf, iAmt, iOfst);
}

/* -- temp files: AES-256-CTR with a per-file random key ----------------------------- */
static int ctr_xor(HFile *p, sqlite3_int64 off, const unsigned char *in, unsigned char *out, int n) {
  assert(p->kind == K_TEMP && p->enc != 0 && off >= 0 && n > 0);
  unsigned char iv[16], junk[16];
  static const unsigned char zeros[16];
  uint64_t blk = (uint64_t)off / 16;
  int skip = (int)(off % 16), len;
  memcpy(iv, p->ctrPrefix, 8);
  for (int i = 0; i < 8; i++) iv[8 + i] = (unsigned char)(blk >> (56 - 8 * i));
  if (EVP_EncryptInit_ex(p->enc, NULL, NULL, NULL, iv) != 1) return 0;
  if (skip && EVP_EncryptUpdate(p->enc, junk, &len, zeros, skip) != 1) return 0;
  if (EVP_EncryptUpdate(p->enc, out, &len, in, n) != 1) return 0;
  STAT_ADD(HELIOSDB_STAT_TEMP_BYTES_CIPHERED, n);
  return 1;
}

static int temp_read(HFile *p, void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  int rc = REAL(p)->pMethods->xRead(REAL(p), zBuf, iAmt, iOfst);
  if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) return rc;
  sqlite3_int64 have = rc == SQLITE_OK ? iAmt : real_avail(p, iOfst);
  if (have > iAmt) have = iAmt;
  if (have > 0 && !ctr_xor(p, iOfst, zBuf, zBuf, (int)have)) return SQLITE_IOERR_READ;
  return rc;
}

static int temp_write(HFile *p, const void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  assert(iAmt > 0);
  if (!ensure_buf(p, iAmt)) return SQLITE_NOMEM;
  if (!ctr_xor(p, iOfst, zBuf, p->buf, iAmt)) return SQLITE_IOERR_WRITE;
  return REAL(p)->pMethods->xWrite(REAL(p), p->buf, iAmt, iOfst);
}

/* -- io methods --------------------------------------------------------------------- */
static void shm_detach_locked(HFile *p, int deleteFlag);

static int hClose(sqlite3_file *pFile) {
  HFile *p = (HFile *)pFile;
  if (p->kind == K_MAIN && p->shm) {
    pthread_mutex_lock(&g_shm_mu);
    shm_detach_locked(p, 0);
    pthread_mutex_unlock(&g_shm_mu);
  }
  int rc = REAL(p)->pMethods ? REAL(p)->pMethods->xClose(REAL(p)) : SQLITE_OK;
  if (p->enc) EVP_CIPHER_CTX_free(p->enc);
  if (p->dec) EVP_CIPHER_CTX_free(p->dec);
  if (p->ck) EVP_CIPHER_CTX_free(p->ck);
  p->ck = 0;
  if (p->buf) OPENSSL_cleanse(p->buf, (size_t)p->nBuf);
  free(p->buf);
  if (p->p1p) OPENSSL_cleanse(p->p1p, (size_t)p->p1sz);
  free(p->p1p);
  free(p->p1c);
  if (p->sub) OPENSSL_cleanse(p->sub, HDB_MAX_PAGE);
  free(p->sub);
  p->sub = 0;
  OPENSSL_cleanse(p->ctrPrefix, sizeof p->ctrPrefix);
  if (p->kind == K_MAIN && p->entry) {
    pthread_mutex_lock(&g_keys_mu);
    if (--p->entry->nOpen == 0 && p->entry->nReg == 0) free_entry_locked(p->entry);
    pthread_mutex_unlock(&g_keys_mu);
  }
  p->enc = p->dec = 0;
  p->buf = p->p1p = p->p1c = 0;
  p->entry = 0;
  return rc;
}

static int hRead(sqlite3_file *pFile, void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  HFile *p = (HFile *)pFile;
  switch (p->kind) {
    case K_MAIN: return main_read(p, zBuf, iAmt, iOfst);
    case K_JOURNAL: return journal_read(p, zBuf, iAmt, iOfst);
    case K_WAL: return wal_read(p, zBuf, iAmt, iOfst);
    case K_TEMP: return temp_read(p, zBuf, iAmt, iOfst);
    default: return REAL(p)->pMethods->xRead(REAL(p), zBuf, iAmt, iOfst);
  }
}

static int hWrite(sqlite3_file *pFile, const void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  HFile *p = (HFile *)pFile;
  switch (p->kind) {
    case K_MAIN: return main_write(p, zBuf, iAmt, iOfst);
    case K_JOURNAL: return journal_write(p, zBuf, iAmt, iOfst);
    case K_WAL: return wal_write(p, zBuf, iAmt, iOfst);
    case K_TEMP: return temp_write(p, zBuf, iAmt, iOfst);
    default: return REAL(p)->pMethods->xWrite(REAL(p), zBuf, iAmt, iOfst);
  }
}

static int hTruncate(sqlite3_file *pFile, sqlite3_int64 size) {
  HFile *p = (HFile *)pFile;
  if (p->kind == K_MAIN) size += HDB_HDR_SIZE;
  if (p->kind == K_JOURNAL || p->kind == K_WAL) p->have4 = 0;
  return REAL(p)->pMethods->xTruncate(REAL(p), size);
}

static int hSync(sqlite3_file *pFile, int flags) {
  HFile *p = (HFile *)pFile;
  if (p->kind == K_MAIN) {
    int rc = main_flush_header(p);
    if (rc != SQLITE_OK) return rc;
  }
  return REAL(p)->pMethods->xSync(REAL(p), flags);
}

static int hFileSize(sqlite3_file *pFile, sqlite3_int64 *pSize) {
  HFile *p = (HFile *)pFile;
  int rc = REAL(p)->pMethods->xFileSize(REAL(p), pSize);
  if (rc == SQLITE_OK && p->kind == K_MAIN) *pSize = *pSize > HDB_HDR_SIZE ? *pSize - HDB_HDR_SIZE : 0;
  return rc;
}

static int hLock(sqlite3_file *f, int e) {
  HFile *p = (HFile *)f;
  int rc = REAL(p)->pMethods->xLock(REAL(p), e);
  if (rc == SQLITE_OK) p->lockLevel = e;
  return rc;
}

static int hUnlock(sqlite3_file *f, int e) {
  HFile *p = (HFile *)f;
  /* Still holding the write lock: persist the encryption count even when SQLite does
  ** not sync (PRAGMA synchronous=OFF). A failure here only delays the count. */
  if (p->kind == K_MAIN && p->lockLevel >= SQLITE_LOCK_EXCLUSIVE && p->entry &&
      __atomic_load_n(&p->entry->pending, __ATOMIC_RELAXED) > 0)
    main_flush_header(p);
  int rc = REAL(p)->pMethods->xUnlock(REAL(p), e);
  if (rc == SQLITE_OK) p->lockLevel = e;
  return rc;
}
static int hCheckReservedLock(sqlite3_file *f, int *r) {
  HFile *p = (HFile *)f;
  return REAL(p)->pMethods->xCheckReservedLock(REAL(p), r);
}

static int hFileControl(sqlite3_file *pFile, int op, void *pArg) {
  HFile *p = (HFile *)pFile;
  if (op == SQLITE_FCNTL_MMAP_SIZE) {
    /* Memory-mapped reads would bypass decryption: always off. */
    *(sqlite3_int64 *)pArg = 0;
    return SQLITE_OK;
  }
  if (op == SQLITE_FCNTL_SIZE_HINT && p->kind == K_MAIN) {
    sqlite3_int64 sz = *(sqlite3_int64 *)pArg + HDB_HDR_SIZE;
    return REAL(p)->pMethods->xFileControl(REAL(p), op, &sz);
  }
  int rc = REAL(p)->pMethods->xFileControl(REAL(p), op, pArg);
  if (rc == SQLITE_OK && op == SQLITE_FCNTL_VFSNAME) {
    char *z = sqlite3_mprintf("%s/%z", HDB_VFS_NAME, *(char **)pArg);
    *(char **)pArg = z;
  }
  return rc;
}

static int hSectorSize(sqlite3_file *f) { HFile *p = (HFile *)f; return REAL(p)->pMethods->xSectorSize(REAL(p)); }
static int hDeviceCharacteristics(sqlite3_file *f) {
  HFile *p = (HFile *)f;
  int d = REAL(p)->pMethods->xDeviceCharacteristics(REAL(p));
  /* Batch-atomic writes would route page writes around this shim's assumptions. */
  return d & ~SQLITE_IOCAP_BATCH_ATOMIC;
}
/* -- the WAL index (-shm) ---------------------------------------------------------------
** SQLite writes the WAL index straight into shared memory, so the shim cannot seal what
** it holds; among it the cumulative checksum of the last committed frame, a function of
** the plaintext. Version 1 leaves it in SQLite's <db>-shm file. Version 2 keeps it off
** the disk: the regions live in a POSIX shared-memory object (tmpfs, RAM) named
**   "/heliosdb-" || hex(HMAC-SHA256(DEK, "HeliosDB shm name v2" || file id ||
**                                   be64(st_dev) || be64(st_ino))[0..15])
** (mode 0600; the HMAC also covers the file's device and inode), which every process
** with the key finds and no one without it can name from the database alone. SQLite's locks stay where they are: the unix VFS's -shm
** file is opened for its lock bytes (its contents stay zero). As the unix VFS does with
** its DMS lock, the first process to open the object (an exclusive fcntl lock on its
** byte 0 succeeds) empties it, then every user holds a shared lock on that byte until
** its last connection unmaps; the last clean close (deleteFlag) unlinks it. */
static void shm_detach_locked(HFile *p, int deleteFlag) {
  ShmObj *o = p->shm;
  if (!o) return;
  assert(o->ref > 0);
  p->shm = 0;
  if (--o->ref > 0) return;
  for (int i = 0; i < o->nRegion; i++)
    if (o->apRegion[i]) munmap(o->apRegion[i], (size_t)o->szRegion);
  free(o->apRegion);
  if (deleteFlag) shm_unlink(o->name);
  if (o->fd >= 0) close(o->fd); /* releases the shared lock */
  ShmObj **pp = &g_shm;
  while (*pp && *pp != o) pp = &(*pp)->next;
  if (*pp) *pp = o->next;
  free(o);
}

/* The object's name: bound to the key, the file id and the file itself (device and
** inode), so that a file-level copy of the database, which shares key and file id, never
** shares its WAL index. */
static int shm_name(HFile *p, char *out) {
  struct stat st;
  if (!p->zName || stat(p->zName, &st) != 0) return 0;
  unsigned char msg[64], mac[32];
  unsigned int mlen = 0;
  static const char label[] = "HeliosDB shm name v2";
  size_t n = sizeof label - 1;
  memcpy(msg, label, n);
  memcpy(msg + n, p->fid, 16);
  n += 16;
  uint64_t dev = (uint64_t)st.st_dev, ino = (uint64_t)st.st_ino;
  for (int i = 0; i < 8; i++) msg[n + i] = (unsigned char)(dev >> (56 - 8 * i));
  for (int i = 0; i < 8; i++) msg[n + 8 + i] = (unsigned char)(ino >> (56 - 8 * i));
  n += 16;
  assert(entry_is_open(p->entry)); /* so its dek is fixed: read without g_keys_mu */
  if (!HMAC(EVP_sha256(), p->entry->dek, 32, msg, n, mac, &mlen)) return 0;
  char *z = out + sprintf(out, "/heliosdb-");
  for (int i = 0; i < 16; i++) z += sprintf(z, "%02x", mac[i]);
  OPENSSL_cleanse(mac, sizeof mac);
  return 1;
}

static int shm_attach_locked(HFile *p, int szRegion) {
  assert(p->kind == K_MAIN && p->sealCk && p->entry != 0 && szRegion > 0);
  if (p->shm) return SQLITE_OK;
  /* The unix VFS's node for SQLite's shm locks (its mapped region stays zero). */
  void volatile *unused = 0;
  int rc = REAL(p)->pMethods->xShmMap(REAL(p), 0, szRegion, 1, &unused);
  if (rc != SQLITE_OK) return rc;
  char name[64];
  if (!shm_name(p, name)) return SQLITE_IOERR_SHMOPEN;
  ShmObj *o = g_shm;
  while (o && strcmp(o->name, name) != 0) o = o->next;
  if (!o) {
    int fd = shm_open(name, O_RDWR | O_CREAT, 0600);
    if (fd < 0) return SQLITE_IOERR_SHMOPEN;
    struct flock l;
    memset(&l, 0, sizeof l);
    l.l_type = F_WRLCK;
    l.l_whence = SEEK_SET;
    l.l_start = 0;
    l.l_len = 1;
    if (fcntl(fd, F_SETLK, &l) == 0) {
      /* No other process uses it: whatever it holds is stale. */
      if (ftruncate(fd, 0) != 0) { close(fd); return SQLITE_IOERR_SHMOPEN; }
      l.l_type = F_RDLCK;
      if (fcntl(fd, F_SETLK, &l) != 0) { close(fd); return SQLITE_IOERR_SHMOPEN; }
    } else {
      l.l_type = F_RDLCK;
      if (fcntl(fd, F_SETLKW, &l) != 0) { close(fd); return SQLITE_IOERR_SHMOPEN; }
    }
    o = calloc(1, sizeof *o);
    if (!o) { close(fd); return SQLITE_NOMEM; }
    snprintf(o->name, sizeof o->name, "%s", name);
    o->fd = fd;
    o->szRegion = szRegion;
    o->next = g_shm;
    g_shm = o;
  }
  o->ref++;
  p->shm = o;
  return SQLITE_OK;
}

static int hShmMap(sqlite3_file *f, int i, int sz, int bExtend, void volatile **pp) {
  HFile *p = (HFile *)f;
  if (p->kind != K_MAIN || !p->sealCk || !p->entry)
    return REAL(p)->pMethods->xShmMap(REAL(p), i, sz, bExtend, pp);
  pthread_mutex_lock(&g_shm_mu);
  int rc = shm_attach_locked(p, sz);
  ShmObj *o = p->shm;
  *pp = 0;
  if (rc == SQLITE_OK && sz != o->szRegion) rc = SQLITE_IOERR_SHMMAP;
  if (rc == SQLITE_OK && i >= o->nRegion) {
    struct stat st;
    sqlite3_int64 need = (sqlite3_int64)(i + 1) * sz;
    if (fstat(o->fd, &st) != 0) rc = SQLITE_IOERR_SHMSIZE;
    else if (st.st_size < need) {
      if (!bExtend) goto out; /* not there yet: *pp stays NULL, as in the unix VFS */
      if (ftruncate(o->fd, need) != 0) rc = SQLITE_IOERR_SHMSIZE;
    }
    if (rc == SQLITE_OK) {
      void **a = realloc(o->apRegion, (size_t)(i + 1) * sizeof *a);
      if (!a) rc = SQLITE_NOMEM;
      else {
        o->apRegion = a;
        for (int k = o->nRegion; k <= i; k++) {
          void *m = mmap(0, (size_t)sz, PROT_READ | PROT_WRITE, MAP_SHARED, o->fd,
                         (off_t)k * sz);
          if (m == MAP_FAILED) { rc = SQLITE_IOERR_SHMMAP; break; }
          a[k] = m;
          o->nRegion = k + 1;
        }
      }
    }
  }
  if (rc == SQLITE_OK && i < o->nRegion) *pp = o->apRegion[i];
out:
  pthread_mutex_unlock(&g_shm_mu);
  return rc;
}
static int hShmLock(sqlite3_file *f, int o, int n, int fl) {
  HFile *p = (HFile *)f;
  return REAL(p)->pMethods->xShmLock(REAL(p), o, n, fl);
}
static void hShmBarrier(sqlite3_file *f) { HFile *p = (HFile *)f; REAL(p)->pMethods->xShmBarrier(REAL(p)); }
static int hShmUnmap(sqlite3_file *f, int d) {
  HFile *p = (HFile *)f;
  if (p->kind == K_MAIN && p->shm) {
    pthread_mutex_lock(&g_shm_mu);
    shm_detach_locked(p, d);
    pthread_mutex_unlock(&g_shm_mu);
  }
  return REAL(p)->pMethods->xShmUnmap(REAL(p), d);
}

/* Version 2: no xFetch/xUnfetch, so SQLite never memory-maps an encrypted file. */
static const sqlite3_io_methods g_io = {
    2, hClose, hRead, hWrite, hTruncate, hSync, hFileSize, hLock, hUnlock,
    hCheckReservedLock, hFileControl, hSectorSize, hDeviceCharacteristics,
    hShmMap, hShmLock, hShmBarrier, hShmUnmap, 0, 0};

static int open_main(HFile *p, const char *zName) {
  assert(p->kind == K_MAIN && p->entry == 0);
  pthread_mutex_lock(&g_keys_mu);
  KeyEntry *e = zName ? find_entry(zName) : 0;
  if (e) {
    /* From here on e's dek and fid are fixed until this file closes (nOpen > 0). */
    e->nOpen++;
    memcpy(p->fid, e->fid, 16);
    p->enc = new_ctx(EVP_aes_256_gcm(), e->dek, 1);
    p->dec = new_ctx(EVP_aes_256_gcm(), e->dek, 0);
  }
  pthread_mutex_unlock(&g_keys_mu);
  if (!e) {
    set_error(zName, 0, "no key is registered for this database file: open it with "
                        "heliosdb (key=...) or register_attach_key() before ATTACH");
    return SQLITE_CANTOPEN;
  }
  p->entry = e;
  unsigned char h[64];
  int rc = REAL(p)->pMethods->xRead(REAL(p), h, 64, 0);
  if (rc != SQLITE_OK || memcmp(h, HDB_MAGIC, HDB_MAGIC_LEN) != 0) {
    set_error(zName, 0, "the file has no HeliosDB encryption header");
    return SQLITE_CANTOPEN;
  }
  if (memcmp(h + HDB_OFF_FILE_ID, p->fid, 16) != 0) {
    set_error(zName, 0, "the file's id differs from the one its key was registered for");
    return SQLITE_CANTOPEN;
  }
  p->sealCk = get_be32(h + HDB_OFF_VERSION) >= 2;
  uint32_t ps = get_be32(h + HDB_OFF_PAGE_SIZE);
  p->pgsz = valid_page_size(ps) ? (int)ps : 4096;
  return (p->enc && p->dec) ? SQLITE_OK : SQLITE_NOMEM;
}

static int open_side(HFile *p, const char *zName) {
  sqlite3_file *m = sqlite3_database_file_object(zName);
  if (!m || m->pMethods != &g_io || ((HFile *)m)->kind != K_MAIN) {
    set_error(zName, 0, "journal or WAL without its encrypted main database");
    return SQLITE_CANTOPEN;
  }
  p->pMain = (HFile *)m;
  assert(p->pMain->entry != 0 && entry_is_open(p->pMain->entry)); /* its dek is fixed */
  memcpy(p->fid, p->pMain->fid, 16);
  p->enc = new_ctx(EVP_aes_256_gcm(), p->pMain->entry->dek, 1);
  p->dec = new_ctx(EVP_aes_256_gcm(), p->pMain->entry->dek, 0);
  p->jPageEnd = -1;
  if (p->pMain->sealCk) {
    p->ck = seal_ctx(p->pMain->entry->dek, p->fid,
                     p->kind == K_WAL ? "HeliosDB WAL checksum seal v2"
                                      : "HeliosDB journal checksum seal v2");
    if (!p->ck) return SQLITE_NOMEM;
  }
  return (p->enc && p->dec) ? SQLITE_OK : SQLITE_NOMEM;
}

static int open_temp(HFile *p) {
  unsigned char key[32];
  if (RAND_bytes(key, 32) != 1 || RAND_bytes(p->ctrPrefix, 8) != 1) return SQLITE_IOERR;
  p->enc = new_ctx(EVP_aes_256_ctr(), key, 1);
  OPENSSL_cleanse(key, sizeof key);
  return p->enc ? SQLITE_OK : SQLITE_NOMEM;
}

static int hOpen(sqlite3_vfs *pVfs, const char *zName, sqlite3_file *pFile, int flags,
                 int *pOutFlags) {
  HFile *p = (HFile *)pFile;
  (void)pVfs;
  assert(pVfs == &g_vfs && pFile != 0);
  memset(p, 0, sizeof *p);
  p->pReal = (sqlite3_file *)&p[1];
  p->zName = zName;
  if (flags & SQLITE_OPEN_MAIN_DB) p->kind = zName ? K_MAIN : K_TEMP;
  else if (flags & SQLITE_OPEN_MAIN_JOURNAL) p->kind = K_JOURNAL;
  else if (flags & SQLITE_OPEN_WAL) p->kind = K_WAL;
  else if (flags & SQLITE_OPEN_SUPER_JOURNAL) p->kind = K_PLAIN;
  else p->kind = K_TEMP; /* temp db/journal, subjournal, transient db, sorter, unnamed */
  if (!zName || (flags & SQLITE_OPEN_DELETEONCLOSE)) {
    if (p->kind == K_MAIN || p->kind == K_JOURNAL || p->kind == K_WAL) p->kind = K_TEMP;
  }
  int rc = g_root->xOpen(g_root, zName, p->pReal, flags, pOutFlags);
  if (rc != SQLITE_OK) {
    p->pReal->pMethods = 0;
    return rc;
  }
  if (p->kind == K_MAIN) rc = open_main(p, zName);
  else if (p->kind == K_JOURNAL || p->kind == K_WAL) rc = open_side(p, zName);
  else if (p->kind == K_TEMP) rc = open_temp(p);
  pFile->pMethods = &g_io;
  if (rc != SQLITE_OK) {
    hClose(pFile);
    pFile->pMethods = 0;
  }
  return rc;
}

static int vDelete(sqlite3_vfs *v, const char *z, int s) { (void)v; return g_root->xDelete(g_root, z, s); }
static int vAccess(sqlite3_vfs *v, const char *z, int f, int *r) { (void)v; return g_root->xAccess(g_root, z, f, r); }
static int vFullPathname(sqlite3_vfs *v, const char *z, int n, char *o) { (void)v; return g_root->xFullPathname(g_root, z, n, o); }
static void *vDlOpen(sqlite3_vfs *v, const char *z) { (void)v; return g_root->xDlOpen(g_root, z); }
static void vDlError(sqlite3_vfs *v, int n, char *z) { (void)v; g_root->xDlError(g_root, n, z); }
static void (*vDlSym(sqlite3_vfs *v, void *h, const char *z))(void) { (void)v; return g_root->xDlSym(g_root, h, z); }
static void vDlClose(sqlite3_vfs *v, void *h) { (void)v; g_root->xDlClose(g_root, h); }
static int vRandomness(sqlite3_vfs *v, int n, char *z) { (void)v; return g_root->xRandomness(g_root, n, z); }
static int vSleep(sqlite3_vfs *v, int us) { (void)v; return g_root->xSleep(g_root, us); }
static int vCurrentTime(sqlite3_vfs *v, double *t) { (void)v; return g_root->xCurrentTime(g_root, t); }
static int vGetLastError(sqlite3_vfs *v, int n, char *z) { (void)v; return g_root->xGetLastError(g_root, n, z); }
static int vCurrentTimeInt64(sqlite3_vfs *v, sqlite3_int64 *t) { (void)v; return g_root->xCurrentTimeInt64(g_root, t); }
static int vSetSystemCall(sqlite3_vfs *v, const char *z, sqlite3_syscall_ptr f) { (void)v; return g_root->xSetSystemCall(g_root, z, f); }
static sqlite3_syscall_ptr vGetSystemCall(sqlite3_vfs *v, const char *z) { (void)v; return g_root->xGetSystemCall(g_root, z); }
static const char *vNextSystemCall(sqlite3_vfs *v, const char *z) { (void)v; return g_root->xNextSystemCall(g_root, z); }

#ifdef _WIN32
__declspec(dllexport)
#endif
int sqlite3_heliosdb_init(sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi) {
  (void)db;
  (void)pzErrMsg;
  SQLITE_EXTENSION_INIT2(pApi);
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  int rc = SQLITE_OK;
  pthread_mutex_lock(&mu);
  if (!g_registered && !sqlite3_vfs_find(HDB_VFS_NAME)) {
    g_root = sqlite3_vfs_find(0);
    if (!g_root || g_root->iVersion < 3) {
      rc = SQLITE_ERROR;
    } else {
      memset(&g_vfs, 0, sizeof g_vfs);
      g_vfs.iVersion = 3;
      g_vfs.szOsFile = (int)sizeof(HFile) + g_root->szOsFile;
      g_vfs.mxPathname = g_root->mxPathname;
      g_vfs.zName = HDB_VFS_NAME;
      g_vfs.xOpen = hOpen;
      g_vfs.xDelete = vDelete;
      g_vfs.xAccess = vAccess;
      g_vfs.xFullPathname = vFullPathname;
      g_vfs.xDlOpen = vDlOpen;
      g_vfs.xDlError = vDlError;
      g_vfs.xDlSym = vDlSym;
      g_vfs.xDlClose = vDlClose;
      g_vfs.xRandomness = vRandomness;
      g_vfs.xSleep = vSleep;
      g_vfs.xCurrentTime = vCurrentTime;
      g_vfs.xGetLastError = vGetLastError;
      g_vfs.xCurrentTimeInt64 = vCurrentTimeInt64;
      g_vfs.xSetSystemCall = vSetSystemCall;
      g_vfs.xGetSystemCall = vGetSystemCall;
      g_vfs.xNextSystemCall = vNextSystemCall;
      rc = sqlite3_vfs_register(&g_vfs, 0);
      if (rc == SQLITE_OK) __atomic_store_n(&g_registered, 1, __ATOMIC_RELEASE);
    }
  } else if (!g_registered) {
    rc = SQLITE_ERROR; /* another "heliosdb" VFS: another copy of this library */
  }
  pthread_mutex_unlock(&mu);
  return rc == SQLITE_OK ? SQLITE_OK_LOAD_PERMANENTLY : rc;
}

/* AES-256-GCM itself, for checking the primitive against NIST SP 800-38D vectors.
** Returns 1 on success. */
int heliosdb_gcm_encrypt_raw(const unsigned char *key, const unsigned char *iv,
                             const unsigned char *aad, int naad, const unsigned char *in,
                             int n, unsigned char *out, unsigned char *tag) {
  EVP_CIPHER_CTX *c = new_ctx(EVP_aes_256_gcm(), key, 1);
  int len = 0, ok = 0;
  if (!c) return 0;
  if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, iv) == 1 &&
      (naad == 0 || EVP_EncryptUpdate(c, NULL, &len, aad, naad) == 1) &&
      (n == 0 || EVP_EncryptUpdate(c, out, &len, in, n) == 1) &&
      EVP_EncryptFinal_ex(c, out + (n ? len : 0), &len) == 1 &&
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1)
    ok = 1;
  EVP_CIPHER_CTX_free(c);
  return ok;
}

/* Add a registration to the key already registered for zPath (same file id), without
** handing the key again: Python's unlock cache, so that a passphrase is stretched once
** while a connection to the file is open. Returns 0, or 1 when there is no such key. */
int heliosdb_key_addref(const char *zPath, const unsigned char *file_id) {
  pthread_mutex_lock(&g_keys_mu);
  KeyEntry *e = find_entry(zPath);
  int rc = (e && memcmp(e->fid, file_id, 16) == 0) ? 0 : 1;
  if (rc == 0) e->nReg++;
  pthread_mutex_unlock(&g_keys_mu);
  return rc;
}
