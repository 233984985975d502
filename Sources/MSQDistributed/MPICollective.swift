import CMPIShim
import Foundation
import MSQ

/// Data-parallel training over Open MPI, for `msq` started by `mpirun`.
///
/// Lives outside the MSQ library so that linking MSQ needs no MPI. Every call goes to
/// `MPI_COMM_WORLD` from the thread that called ``initialize()`` (MPI is initialised with
/// `MPI_THREAD_FUNNELED`: OpenMP's threads compute but never call MPI). MPI reports failures as
/// codes (`MPI_ERRORS_RETURN`), which arrive as ``CollectiveError/transport(operation:rank:message:)``
/// with MPI's own message. The sums are MPI's `MPI_SUM` in place; Open MPI's reductions add each
/// element's contributions once and send the result to every rank (or add in the same order
/// on each, and float addition commutes), so the ranks' sums are bit-identical (checked at 2 to 5
/// ranks). The grouping of the additions depends on the number of ranks and on the algorithm,
/// so from 3 ranks on the blocking and the started sum of the same values may differ in the last
/// bit: a run keeps to one of them for a given buffer.
public final class MPICollective: Collective {
    /// This process's rank in `MPI_COMM_WORLD`, fixed at initialisation so no call is needed to read it.
    public let rank: Int
    /// The size of `MPI_COMM_WORLD`, fixed at initialisation so no call is needed to read it.
    public let size: Int
    /// The thread that initialised MPI, the only one allowed to call it under `MPI_THREAD_FUNNELED`.
    private let owner: pthread_t
    private var finalized = false

    private init(rank: Int, size: Int) {
        self.rank = rank
        self.size = size
        owner = pthread_self()
    }

    /// Whether this process was started by `mpirun` (or another MPI launcher), so `msq` knows
    /// to initialise MPI instead of running alone.
    ///
    /// Open MPI's launcher sets `OMPI_COMM_WORLD_SIZE`; PMI and PMIx launchers (Slurm's `srun`,
    /// MPICH's Hydra) set `PMI_SIZE` or `PMIX_RANK`.
    public static var launchedByMPI: Bool {
        let environment = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].contains { environment[$0] != nil }
    }

    /// Initialises MPI once per process and returns this rank's view of the run.
    ///
    /// MPI cannot be initialised twice, nor again after ``finalize()``; both are refused. Unless
    /// the environment says otherwise, Open MPI's `MPI_Iallreduce` uses Rabenseifner's algorithm,
    /// the one of libnbc's whose start does not do the whole reduction before returning.
    public static func initialize() throws(CollectiveError) -> MPICollective {
        let environment = ProcessInfo.processInfo.environment
        let launcherRank = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"]
            .lazy.compactMap { environment[$0].flatMap { Int($0) } }.first ?? 0
        var initialized: Int32 = 0, finalized: Int32 = 0
        try check(msq_mpi_state(&initialized, &finalized), "MPI_Initialized", rank: launcherRank)
        if finalized != 0 {
            throw .transport(operation: "MPI_Init_thread", rank: launcherRank,
                             message: "MPI was finalized and cannot be initialised again")
        }
        if initialized != 0 {
            throw .transport(operation: "MPI_Init_thread", rank: launcherRank,
                             message: "MPI is already initialised (MPICollective.initialize() is called once per process)")
        }
        // Open MPI's nonblocking all-reduce (libnbc) picks recursive doubling for 2 ranks, whose
        // MPI_Iallreduce call itself takes about as long as a blocking MPI_Allreduce in place
        // (~100 ms for ResNet-18's 47 MB gradient on 2 cores), which leaves nothing to overlap;
        // Rabenseifner's returns at once (0.03 ms) and completes in ~90 ms. An explicit
        // `--mca coll_libnbc_iallreduce_algorithm` (or the variable) still wins.
        setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "3", 0)
        var provided: Int32 = 0
        try check(msq_mpi_init(&provided), "MPI_Init_thread", rank: launcherRank)
        var rank: Int32 = 0, size: Int32 = 0
        try check(msq_mpi_rank_size(&rank, &size), "MPI_Comm_rank", rank: launcherRank)
        if provided < msq_mpi_thread_funneled() {
            // MPI_THREAD_SINGLE forbids the OpenMP threads that run beside the main one.
            _ = msq_mpi_finalize()
            throw .transport(operation: "MPI_Init_thread", rank: Int(rank),
                             message: "MPI provides thread level \(provided); MSQ needs MPI_THREAD_FUNNELED (\(msq_mpi_thread_funneled()))")
        }
        return MPICollective(rank: Int(rank), size: Int(size))
    }

    /// Ends MPI for this process; every rank calls it once before exiting, after its last
    /// collective operation (later ones are refused).
    public func finalize() throws(CollectiveError) {
        try usable("MPI_Finalize")
        finalized = true
        try check(msq_mpi_finalize(), "MPI_Finalize")
    }

    /// `MPI_Allreduce` in place (`MPI_IN_PLACE`), so no second gradient-sized buffer is needed;
    /// buffers longer than `Int32.max` elements go in chunks, as MPI counts are `int`s.
    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) {
        try usable("MPI_Allreduce")
        try check(msq_mpi_allreduce_sum_float(values.baseAddress, values.count), "MPI_Allreduce")
    }

    /// `MPI_Allreduce` in place, chunked as the `Float` one; for statistics that need doubles.
    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Double>) throws(CollectiveError) {
        try usable("MPI_Allreduce")
        try check(msq_mpi_allreduce_sum_double(values.baseAddress, values.count), "MPI_Allreduce")
    }

    /// `MPI_Iallreduce` in place, so a gradient's sum can travel while later layers compute.
    ///
    /// Open MPI progresses it only inside MPI calls: ``CollectiveRequest/test()`` between
    /// pieces of work moves it on.
    public func startAllReduceSum(_ values: UnsafeMutableBufferPointer<Float>) throws(CollectiveError) -> any CollectiveRequest {
        try usable("MPI_Iallreduce")
        var request: OpaquePointer?
        try check(msq_mpi_iallreduce_sum_float(values.baseAddress, values.count, &request), "MPI_Iallreduce")
        return MPIRequest(request!, collective: self)
    }

    /// `MPI_Bcast` of raw bytes, chunked as the sums, so any value type can be shared.
    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws(CollectiveError) {
        try usable("MPI_Bcast")
        guard let root32 = Int32(exactly: root), 0 <= root, root < size else {
            throw .transport(operation: "MPI_Bcast", rank: rank, message: "root \(root) is not a rank of 0..<\(size)")
        }
        try check(msq_mpi_bcast(bytes.baseAddress, bytes.count, root32), "MPI_Bcast")
    }

    /// `MPI_Barrier`, for the rare point where ranks must line up, such as before a timer starts.
    public func barrier() throws(CollectiveError) {
        try usable("MPI_Barrier")
        try check(msq_mpi_barrier(), "MPI_Barrier")
    }

    /// Writes `msq: rank R: message` to standard error, then `MPI_Abort`s, which ends every rank
    /// (through `mpirun`), so none waits forever in a collective this rank will never join.
    public func abort(_ message: String, code: Int32) -> Never {
        var text = message
        while text.hasSuffix("\n") { text.removeLast() }
        FileHandle.standardError.write(Data("msq: rank \(rank): \(text)\n".utf8))
        if finalized { exit(code) }
        msq_mpi_abort(code)
    }

    /// Refuses calls after ``finalize()`` and from threads other than MPI's (both undefined in MPI).
    func usable(_ operation: String) throws(CollectiveError) {
        if finalized {
            throw .transport(operation: operation, rank: rank, message: "MPI is finalized")
        }
        if pthread_equal(pthread_self(), owner) == 0 {
            throw .transport(operation: operation, rank: rank,
                             message: "called from a thread other than the one that initialised MPI (MPI_THREAD_FUNNELED)")
        }
    }

    func check(_ code: Int32, _ operation: String) throws(CollectiveError) {
        try Self.check(code, operation, rank: rank)
    }

    static func check(_ code: Int32, _ operation: String, rank: Int) throws(CollectiveError) {
        guard code != MSQ_MPI_SUCCESS else { return }
        throw .transport(operation: operation, rank: rank, message: errorString(code))
    }

    /// MPI's message for an error code.
    static func errorString(_ code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: 512)
        msq_mpi_error_string(code, &buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// An `MPI_Iallreduce` in flight; released (after completing, if need be) when the last
/// reference goes, since MPI forbids freeing an active nonblocking collective.
final class MPIRequest: CollectiveRequest {
    private let request: OpaquePointer
    private let collective: MPICollective

    init(_ request: OpaquePointer, collective: MPICollective) {
        self.request = request
        self.collective = collective
    }

    deinit { msq_mpi_request_free(request) }

    func test() throws(CollectiveError) -> Bool {
        try collective.usable("MPI_Testall")
        var done: Int32 = 0
        try collective.check(msq_mpi_test(request, &done), "MPI_Testall")
        return done != 0
    }

    func wait() throws(CollectiveError) {
        try collective.usable("MPI_Waitall")
        try collective.check(msq_mpi_wait(request), "MPI_Waitall")
    }
}
