/* msq_mpi.h — the MPI calls MSQDistributed makes, as plain functions over MPI_COMM_WORLD.
 * Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, MPI_IN_PLACE) are macros Swift cannot
 * import, so the C side spells them. This header does not include <mpi.h>: Swift sees only ints,
 * pointers and an opaque request. Every function returning int returns an MPI error code
 * (MPI_SUCCESS is 0), which msq_mpi_error_string turns into MPI's message; MPI_COMM_WORLD's error
 * handler is MPI_ERRORS_RETURN, so failures come back as codes instead of ending the process. */
#ifndef MSQ_MPI_H
#define MSQ_MPI_H

/** MPI_SUCCESS, for callers that do not include <mpi.h>. */
#define MSQ_MPI_SUCCESS 0

/** MPI_Init_thread with MPI_THREAD_FUNNELED (only the main thread calls MPI), then
 *  MPI_ERRORS_RETURN on MPI_COMM_WORLD. *provided receives the thread level MPI granted:
 *  msq_mpi_thread_funneled() or more is enough. */
int msq_mpi_init(int *provided);
/** MPI_THREAD_FUNNELED's value. */
int msq_mpi_thread_funneled(void);
/** MPI_Initialized and MPI_Finalized: 1 or 0 each. */
int msq_mpi_state(int *initialized, int *finalized);
/** MPI_Comm_rank and MPI_Comm_size of MPI_COMM_WORLD. */
int msq_mpi_rank_size(int *rank, int *size);

/** Sums count floats over all ranks in place (MPI_IN_PLACE). Counts above INT_MAX go as
 *  several calls of at most INT_MAX elements; a negative count is MPI_ERR_COUNT. */
int msq_mpi_allreduce_sum_float(float *values, long count);
/** As msq_mpi_allreduce_sum_float, for doubles. */
int msq_mpi_allreduce_sum_double(double *values, long count);

/** A started MPI_Iallreduce (one MPI_Request per INT_MAX-element chunk). */
typedef struct msq_mpi_request msq_mpi_request;
/** Starts summing count floats over all ranks in place; *request must be completed by
 *  msq_mpi_test or msq_mpi_wait, then released with msq_mpi_request_free. On failure *request
 *  is NULL (chunks already started are waited for first, so no MPI operation is left behind). */
int msq_mpi_iallreduce_sum_float(float *values, long count, msq_mpi_request **request);
/** MPI_Testall on the request's chunks: *done is 1 once all are complete (and stays 1). */
int msq_mpi_test(msq_mpi_request *request, int *done);
/** MPI_Waitall on the request's chunks. */
int msq_mpi_wait(msq_mpi_request *request);
/** Frees the request (NULL is ignored). It must be complete: MPI forbids freeing an active
 *  nonblocking collective, so an incomplete one is waited for first (unless MPI is finalized). */
void msq_mpi_request_free(msq_mpi_request *request);

/** MPI_Bcast of count bytes from root, in chunks of at most INT_MAX bytes. */
int msq_mpi_bcast(void *bytes, long count, int root);
/** MPI_Barrier on MPI_COMM_WORLD. */
int msq_mpi_barrier(void);
/** MPI_Abort on MPI_COMM_WORLD: ends every rank with code; does not return. */
void msq_mpi_abort(int code) __attribute__((noreturn));
/** MPI_Finalize. */
int msq_mpi_finalize(void);

/** Makes the chunks of the count-taking calls at most `elements` long (INT_MAX when `elements`
 *  is not in 1..<INT_MAX): lets a test reach the chunked path without an 8 GB buffer. */
void msq_mpi_set_chunk_limit(long elements);

/** MPI's message for code (MPI_Error_string) in buffer[length], always NUL-terminated. */
void msq_mpi_error_string(int code, char *buffer, long length);

#endif
