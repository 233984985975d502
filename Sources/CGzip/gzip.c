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

int msq_write_file_gzip(const char *path, const unsigned char *data, size_t len,
                        char *err, size_t err_len) {
    gzFile f = gzopen(path, "wb");
    if (!f) {
        snprintf(err, err_len, "cannot create: %s", strerror(errno));
        return -1;
    }
    /* gzwrite takes an unsigned count, so large buffers go in chunks. */
    size_t done = 0;
    while (done < len) {
        size_t chunk = len - done > (1u << 30) ? (1u << 30) : len - done;
        int put = gzwrite(f, data + done, (unsigned)chunk);
        if (put <= 0) {
            int code = 0;
            const char *msg = gzerror(f, &code);
            snprintf(err, err_len, "write error: %s", msg ? msg : "unknown zlib error");
            gzclose(f);
            return -2;
        }
        done += (size_t)put;
    }
    if (gzclose(f) != Z_OK) {
        snprintf(err, err_len, "write error while closing: %s", strerror(errno));
        return -2;
    }
    return 0;
}
