import ArgumentParser
import Foundation
import MSQ
import MSQDistributed

/// The processes of this `msq` run: Open MPI's ranks when `mpirun` started it, else this process alone.
func startProcesses() throws -> any Collective {
    guard MPICollective.launchedByMPI else { return SingleProcess() }
    return try MPICollective.initialize()
}

/// Ends the run's processes: MPI is finalised on success so `mpirun` reports a clean exit.
func finishProcesses(_ collective: any Collective) {
    if let mpi = collective as? MPICollective { try? mpi.finalize() }
}

/// Runs `body`; with several processes a failure on this rank ends every rank (MPI_Abort) after
/// printing it with the rank's number: the others would otherwise wait for it in the next
/// collective operation forever.
func runOrAbort(_ collective: any Collective, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch {
        guard collective.size > 1 else { throw error }
        collective.abort("error: " + MSQCommand.message(for: error), code: 1)
    }
}

/// The kernel threads per process when `--threads` is 0 (all cores): under `mpirun`, the cores this
/// rank is bound to, or the machine's cores shared among the ranks on this node when unbound.
func defaultThreads(processes: Int) -> Int {
    guard processes > 1 else { return 0 }
    let online = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    let bound = RunLimits.availableCores
    if bound < online { return bound }
    let local = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap(Int.init) ?? processes
    return max(1, online / max(1, local))
}
