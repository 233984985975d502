/* CMPI.h — Open MPI's C API. The target exists for its pkg-config flags (`pkg-config ompi-c`),
 * which SwiftPM hands to CMPIShim, the C code that calls MPI; Swift cannot use MPI_COMM_WORLD,
 * MPI_FLOAT or MPI_SUM directly, as Open MPI defines them as casts of global symbols' addresses. */
#include <mpi.h>
