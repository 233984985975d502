/* msq_mpi.c — MSQDistributed's MPI calls over MPI_COMM_WORLD (see msq_mpi.h). */
#include "msq_mpi.h"
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* MPI counts are ints: longer buffers go as chunks of at most this many elements. A variable
 * only so that a test can make it small (msq_mpi_set_chunk_limit). */
static long chunk_limit = INT_MAX;

void msq_mpi_set_chunk_limit(long elements) {
    chunk_limit = elements > 0 && elements < INT_MAX ? elements : INT_MAX;
}

static long chunks_for(long count) { return count == 0 ? 0 : (count - 1) / chunk_limit + 1; }

int msq_mpi_init(int *provided) {
    *provided = MPI_THREAD_SINGLE;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, provided);
    if (rc != MPI_SUCCESS) return rc;
    return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

int msq_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }

int msq_mpi_state(int *initialized, int *finalized) {
    int rc = MPI_Initialized(initialized);
    if (rc != MPI_SUCCESS) return rc;
    return MPI_Finalized(finalized);
}

int msq_mpi_rank_size(int *rank, int *size) {
    int rc = MPI_Comm_rank(MPI_COMM_WORLD, rank);
    if (rc != MPI_SUCCESS) return rc;
    return MPI_Comm_size(MPI_COMM_WORLD, size);
}

static int allreduce_sum(void *values, long count, MPI_Datatype type, size_t element_size) {
    if (count < 0) return MPI_ERR_COUNT;
    char *p = values;
    for (long done = 0; done < count;) {
        long n = count - done < chunk_limit ? count - done : chunk_limit;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p + (size_t)done * element_size, (int)n, type, MPI_SUM,
                               MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        done += n;
    }
    return MPI_SUCCESS;
}

int msq_mpi_allreduce_sum_float(float *values, long count) {
    return allreduce_sum(values, count, MPI_FLOAT, sizeof(float));
}

int msq_mpi_allreduce_sum_double(double *values, long count) {
    return allreduce_sum(values, count, MPI_DOUBLE, sizeof(double));
}

struct msq_mpi_request {
    int done;
    int count; /* chunks */
    MPI_Request requests[];
};

/* The first chunk's own error when MPI_Testall/MPI_Waitall report MPI_ERR_IN_STATUS. */
static int status_error(int rc, const MPI_Status *statuses, int count) {
    if (rc != MPI_ERR_IN_STATUS) return rc;
    for (int i = 0; i < count; i++)
        if (statuses[i].MPI_ERROR != MPI_SUCCESS && statuses[i].MPI_ERROR != MPI_ERR_PENDING)
            return statuses[i].MPI_ERROR;
    return rc;
}

static int wait_all(msq_mpi_request *r) {
    if (r->done) return MPI_SUCCESS;
    MPI_Status *statuses = malloc(sizeof(MPI_Status) * (size_t)(r->count ? r->count : 1));
    if (!statuses) return MPI_ERR_NO_MEM;
    int rc = status_error(MPI_Waitall(r->count, r->requests, statuses), statuses, r->count);
    free(statuses);
    if (rc == MPI_SUCCESS) r->done = 1;
    return rc;
}

int msq_mpi_iallreduce_sum_float(float *values, long count, msq_mpi_request **request) {
    *request = NULL;
    if (count < 0) return MPI_ERR_COUNT;
    long chunks = chunks_for(count);
    if (chunks > INT_MAX) return MPI_ERR_COUNT;
    msq_mpi_request *r = malloc(sizeof(msq_mpi_request) + sizeof(MPI_Request) * (size_t)chunks);
    if (!r) return MPI_ERR_NO_MEM;
    r->done = 0;
    r->count = 0;
    for (long done = 0; done < count;) {
        long n = count - done < chunk_limit ? count - done : chunk_limit;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, values + done, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                                &r->requests[r->count]);
        if (rc != MPI_SUCCESS) {
            (void)wait_all(r);
            free(r);
            return rc;
        }
        r->count++;
        done += n;
    }
    *request = r;
    return MPI_SUCCESS;
}

int msq_mpi_test(msq_mpi_request *request, int *done) {
    *done = request->done;
    if (request->done) return MPI_SUCCESS;
    MPI_Status *statuses = malloc(sizeof(MPI_Status) * (size_t)(request->count ? request->count : 1));
    if (!statuses) return MPI_ERR_NO_MEM;
    int flag = 0;
    int rc = status_error(MPI_Testall(request->count, request->requests, &flag, statuses), statuses,
                          request->count);
    free(statuses);
    if (rc != MPI_SUCCESS) return rc;
    request->done = flag ? 1 : 0;
    *done = request->done;
    return MPI_SUCCESS;
}

int msq_mpi_wait(msq_mpi_request *request) { return wait_all(request); }

void msq_mpi_request_free(msq_mpi_request *request) {
    if (!request) return;
    /* After MPI_Finalize no MPI call is allowed, MPI_Finalized aside. */
    int finalized = 0;
    if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) (void)wait_all(request);
    free(request);
}

int msq_mpi_bcast(void *bytes, long count, int root) {
    if (count < 0) return MPI_ERR_COUNT;
    char *p = bytes;
    for (long done = 0; done < count;) {
        long n = count - done < chunk_limit ? count - done : chunk_limit;
        int rc = MPI_Bcast(p + done, (int)n, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        done += n;
    }
    return MPI_SUCCESS;
}

int msq_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }

void msq_mpi_abort(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    /* MPI_Abort should not return; if it does, this process at least ends. */
    _Exit(code ? code : 1);
}

int msq_mpi_finalize(void) { return MPI_Finalize(); }

void msq_mpi_error_string(int code, char *buffer, long length) {
    if (length <= 0) return;
    char message[MPI_MAX_ERROR_STRING + 1];
    int message_length = 0;
    if (MPI_Error_string(code, message, &message_length) != MPI_SUCCESS || message_length <= 0) {
        snprintf(buffer, (size_t)length, "MPI error %d", code);
        return;
    }
    message[message_length < MPI_MAX_ERROR_STRING ? message_length : MPI_MAX_ERROR_STRING] = 0;
    snprintf(buffer, (size_t)length, "%s", message);
}
