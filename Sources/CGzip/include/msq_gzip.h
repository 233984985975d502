/* msq_gzip.h — reads a whole file, gunzipping it when it starts with the gzip magic. */
#ifndef MSQ_GZIP_H
#define MSQ_GZIP_H
#include <stddef.h>

/** Reads `path` into a malloc'ed buffer (*out, *out_len), transparently decompressing gzip.
 *  Returns 0 on success; otherwise a negative code and a message in err[err_len]:
 *  -1 cannot open, -2 read error, -3 corrupt or truncated gzip stream, -4 out of memory.
 *  The caller frees *out with msq_gzip_free. */
int msq_read_file_maybe_gzip(const char *path, unsigned char **out, size_t *out_len,
                             char *err, size_t err_len);
void msq_gzip_free(unsigned char *buffer);

/** Writes `len` bytes of `data` to `path` as a gzip file (created or truncated).
 *  Returns 0 on success; otherwise a negative code and a message in err[err_len]:
 *  -1 cannot create the file, -2 write or close error. */
int msq_write_file_gzip(const char *path, const unsigned char *data, size_t len,
                        char *err, size_t err_len);
#endif
