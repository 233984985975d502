/* gzip.c — whole-file reads through zlib, which also passes plain files through unchanged. */
#include "msq_gzip.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int msq_read_file_maybe_gzip(const char *path, unsigned char **out, size_t *out_len,
                             char *err, size_t err_len) {
    *out = NULL;
    *out_len = 0;
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        snprintf(err, err_len, "cannot open: %s", strerror(errno));
        return -1;
    }
    fclose(probe);
    gzFile f = gzopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "cannot open: %s", strerror(errno));
        return -1;
    }
    size_t cap = 1 << 20, len = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) { gzclose(f); snprintf(err, err_len, "out of memory"); return -4; }
    for (;;) {
        if (cap - len < (1 << 16)) {
            size_t ncap = cap * 2;
            unsigned char *nb = realloc(buf, ncap);
            if (!nb) { free(buf); gzclose(f); snprintf(err, err_len, "out of memory"); return -4; }
            buf = nb;
            cap = ncap;
        }
        int got = gzread(f, buf + len, (unsigned)(cap - len));
        if (got < 0) {
            int code = 0;
            const char *msg = gzerror(f, &code);
            snprintf(err, err_len, "corrupt gzip data: %s", msg ? msg : "unknown zlib error");
            free(buf);
            gzclose(f);
            return code == Z_ERRNO ? -2 : -3;
        }
        if (got == 0) break;
        len += (size_t)got;
    }
    /* gzread returns 0 both at a clean end and at a truncated stream; gzclose tells them apart. */
    int code = 0;
    const char *msg = gzerror(f, &code);
    if (code != Z_OK && code != Z_STREAM_END) {
        snprintf(err, err_len, "corrupt or truncated gzip data: %s", msg ? msg : "unknown zlib error");
        free(buf);
        gzclose(f);
        return -3;
    }
    int rc = gzclose(f);
    if (rc == Z_BUF_ERROR) {
        snprintf(err, err_len, "truncated gzip data (the stream ends early)");
        free(buf);
        return -3;
    }
    *out = buf;
    *out_len = len;
    return 0;
}

void msq_gzip_free(unsigned char *buffer) { free(buffer); }
