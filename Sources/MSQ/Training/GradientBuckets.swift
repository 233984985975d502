import Foundation

/// Sums a model's parameter gradients over the ranks of a data-parallel run, in a few flat buckets
/// each started as soon as the backward pass has finished its parameters.
///
/// Rank r, holding `n_r` of a global batch of `N` images, has gradients of the mean loss over its
/// own `n_r`; the bucket holds `(n_r/N)·g_r`, so the sum over ranks is the gradient of the mean
/// over all `N`, what one process computes on the whole batch. Buckets follow the parameters in
/// reverse order (the order backward finishes them) and hold about ``bucketBytes`` each. A bucket
/// starts when every parameter in it is final: ``Sequential`` reports each child as its backward
/// returns, so models built of `Sequential`s (the ResNets, MobileNetV3) start buckets during the
/// backward; the others start every bucket at ``finish()``. Open MPI progresses a started
/// all-reduce only inside MPI calls, so each report also polls the buckets in flight.
public final class GradientBuckets {
    /// The run's processes.
    public let collective: any Collective
    /// The target size of one bucket.
    public let bucketBytes: Int
    /// The number of buckets.
    public var bucketCount: Int { buckets.count }
    /// Floats all-reduced per step (every trainable parameter's gradient).
    public let floatCount: Int

    /// Buckets started before ``finish()`` was called, over all steps so far.
    public private(set) var startedDuringBackward = 0
    /// Buckets started, over all steps so far.
    public private(set) var started = 0
    /// Seconds spent in ``finish()`` (communication the backward did not hide), over all steps.
    public private(set) var exposedSeconds = 0.0

    private struct Bucket {
        var members: [Int]
        var offset: Int
        var count: Int
        var pending = 0
        var request: (any CollectiveRequest)?
    }

    private let parameters: [Parameter]
    private let offsets: [Int]
    private let indexOf: [ObjectIdentifier: Int]
    private let bucketOf: [Int]
    private var buckets: [Bucket]
    private var ready: [Bool]
    private var scale: Float = 1
    private let buffer: UnsafeMutableBufferPointer<Float>
    private var hooked: [Sequential] = []
    private var inStep = false

    /// Plans the buckets of `model`'s trainable parameters and hooks its `Sequential`s.
    ///
    /// - Parameters:
    ///   - model: the replica; its trainable parameters in ``Module/trainableParameters()`` order.
    ///   - collective: the run's processes.
    ///   - bucketBytes: nil = a quarter of the gradient, clamped to 256 KiB…25 MiB (PyTorch DDP's
    ///     default cap is 25 MiB): a few buckets, so the first can start early.
    public init(model: Module, collective: any Collective, bucketBytes: Int? = nil) {
        self.collective = collective
        parameters = model.trainableParameters().reversed()
        var offsets: [Int] = []
        var total = 0
        for p in parameters {
            offsets.append(total)
            total += p.value.count
        }
        self.offsets = offsets
        floatCount = total
        let cap = bucketBytes ?? min(25 << 20, max(256 << 10, total * MemoryLayout<Float>.stride / 4))
        self.bucketBytes = cap
        var buckets: [Bucket] = []
        var bucketOf: [Int] = []
        for (i, p) in parameters.enumerated() {
            if let last = buckets.last, last.count * MemoryLayout<Float>.stride < cap {
                buckets[buckets.count - 1].members.append(i)
                buckets[buckets.count - 1].count += p.value.count
            } else {
                buckets.append(Bucket(members: [i], offset: offsets[i], count: p.value.count))
            }
            bucketOf.append(buckets.count - 1)
        }
        self.buckets = buckets
        self.bucketOf = bucketOf
        indexOf = Dictionary(uniqueKeysWithValues: parameters.enumerated().map { (ObjectIdentifier($0.element), $0.offset) })
        ready = Array(repeating: false, count: parameters.count)
        buffer = .allocate(capacity: max(total, 1))
        var sequentials: [Sequential] = []
        if let s = model as? Sequential { sequentials.append(s) }
        // A model that wraps its Sequential body (the ResNets, MobileNetV3) visits the body's
        // children, not the body: find it among the model's stored properties.
        for child in Mirror(reflecting: model).children {
            if let s = child.value as? Sequential, !sequentials.contains(where: { $0 === s }) { sequentials.append(s) }
        }
        model.visitModules(prefix: "") { _, m in
            if let s = m as? Sequential, !sequentials.contains(where: { $0 === s }) { sequentials.append(s) }
        }
        for s in sequentials {
            s.onChildBackward = { [weak self] child in self?.childFinished(child) }
        }
        hooked = sequentials
    }

    deinit {
        unhook()
        buffer.deallocate()
    }

    /// Stops listening to the model's `Sequential`s (before buckets for a changed model hook them).
    func unhook() {
        for s in hooked { s.onChildBackward = nil }
        hooked = []
    }

    /// Whether these buckets hold exactly `model`'s trainable parameters, in its order.
    public func covers(_ model: Module) -> Bool {
        let current = model.trainableParameters()
        return current.count == parameters.count
            && zip(current, parameters.reversed()).allSatisfy { $0 === $1 }
    }

    /// Starts a step whose local gradients are to be weighted by `share` = `n_r/N`.
    public func beginStep(share: Double) {
        scale = Float(share)
        for i in ready.indices { ready[i] = false }
        for b in buckets.indices {
            buckets[b].pending = buckets[b].members.count
            buckets[b].request = nil
        }
        inStep = true
    }

    /// Marks `module`'s parameters final for this step and starts any bucket now complete.
    func childFinished(_ module: any Module) {
        guard inStep else { return }
        module.visitParameters(prefix: "") { _, p in
            guard let i = indexOf[ObjectIdentifier(p)], !ready[i] else { return }
            ready[i] = true
            let b = bucketOf[i]
            buckets[b].pending -= 1
            if buckets[b].pending == 0 { try? start(b, early: true) }
        }
        // Failures surface at finish(): the same request's wait reports them.
        for b in buckets.indices { if let r = buckets[b].request { _ = try? r.test() } }
    }

    private func start(_ b: Int, early: Bool) throws(CollectiveError) {
        let bucket = buckets[b]
        for i in bucket.members {
            let dst = buffer.baseAddress! + offsets[i]
            let n = parameters[i].value.count
            let s = scale
            parameters[i].grad.withUnsafePointer { g in
                for j in 0..<n { dst[j] = g[j] * s }
            }
        }
        let slice = UnsafeMutableBufferPointer(rebasing: buffer[bucket.offset..<(bucket.offset + bucket.count)])
        buckets[b].request = try collective.startAllReduceSum(slice)
        started += 1
        if early { startedDuringBackward += 1 }
    }

    /// Starts the buckets not yet started, waits for all and writes the sums into the gradients.
    public func finish() throws(CollectiveError) {
        let t0 = Date()
        defer {
            inStep = false
            exposedSeconds += Date().timeIntervalSince(t0)
        }
        for b in buckets.indices where buckets[b].request == nil { try start(b, early: false) }
        for b in buckets.indices { try buckets[b].request?.wait() }
        for (i, p) in parameters.enumerated() {
            let src = buffer.baseAddress! + offsets[i]
            let n = p.value.count
            p.grad.withUnsafeMutablePointer { g in g.update(from: src, count: n) }
        }
    }
}
