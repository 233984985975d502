import Foundation
import MSQ
import Testing

// Issue 19: the methods' estimates split over data-parallel ranks (each rank a thread here, see
// CollectiveTestSupport.swift), and the bit-scheme check after each decision point.

/// |a − b| within `relative` of the larger magnitude.
private func close(_ a: Double, _ b: Double, relative: Double = 1e-6) -> Bool {
    abs(a - b) <= relative * max(abs(a), abs(b)) + 1e-300
}

/// SmallNet (3 quantized layers, 4 bits) and a calibration batch of 8 synthetic 8×8 images: what
/// every rank holds, built the same way on each.
private struct HessianReplica {
    let model: Sequential
    let layers: [QuantizedLayer]
    let images: Tensor
    let labels: [Int32]

    init() throws {
        model = makeSmallNet(seed: 21)
        layers = try quantizeForMSQ(model, initialBits: 4)
        let data = try SyntheticDataset(count: 8, sampleShape: [1, 8, 8], numClasses: 4, seed: 22)
        (images, labels) = try calibrationBatch(from: data, normalization: Normalization(mean: [0.5], std: [0.3]), count: 8)
    }

    func estimate(_ estimator: TraceEstimator, seed: UInt64, maxProbes: Int, tolerance: Double,
                  collective: any Collective) throws -> HessianTraceEstimate {
        switch estimator {
        case .hutchinson:
            try HutchinsonTrace(model: model, layers: layers, images: images, labels: labels, seed: seed, maxProbes: maxProbes,
                                minProbes: 2, relativeTolerance: tolerance).estimate(collective: collective)
        case .sampledGaussNewton:
            try SampledGaussNewtonTrace(model: model, layers: layers, images: images, seed: seed, maxProbes: maxProbes,
                                        minProbes: 2, relativeTolerance: tolerance).estimate(collective: collective)
        }
    }
}

/// A game of 7 players (additive worths, two synergies) whose walks truncate at half of v(full).
private func synergyGame(_ active: [Bool]) -> Double {
    let worth: [Double] = [0.30, 0.05, 0.12, 0.20, 0.01, 0.08, 0.15]
    var v = zip(worth, active).reduce(0.0) { $0 + ($1.1 ? $1.0 : 0) }
    if active[0] && active[3] { v += 0.1 }
    if active[2] && active[6] { v += 0.05 }
    return v
}

/// SmallNet with a supernet weight (candidates 2, 4, 8) on each of its 3 layers and a batch of 24 images.
private func smallSupernetGame() throws -> SupernetGame {
    let model = makeSmallNet(seed: 4)
    var layers: [SupernetWeight] = []
    for (_, module) in quantizableLayers(of: model) {
        let supernet = SupernetWeight(candidates: [2, 4, 8])
        (module as? Conv2d)?.weightTransform = supernet
        (module as? Linear)?.weightTransform = supernet
        layers.append(supernet)
    }
    let data = try SyntheticDataset(count: 24, sampleShape: [1, 8, 8], numClasses: 4, seed: 5)
    let batch = try calibrationBatch(from: data, normalization: Normalization(mean: [0.5], std: [0.3]), count: 24)
    return SupernetGame(model: model, layers: layers, images: batch.images, labels: batch.labels)
}

/// Whether `error` is ``CollectiveError/replicasDiffer(_:)`` about the bit scheme at `step`.
private func isSchemeMismatch(_ error: any Error, step: Int) -> Bool {
    guard case .replicasDiffer(let what)? = error as? CollectiveError else { return false }
    return what.hasPrefix("bit scheme at step \(step): ")
}

/// Prepares `method` with `collective` (3-step epochs, 4 of them) and runs its hooks for `steps` steps.
private func drive(_ method: any TrainingMethod, model: any Module, steps: Int, collective: any Collective,
                   log: @escaping (String) -> Void = { _ in }) throws {
    try method.prepare(model: model, plan: TrainingPlan(stepsPerEpoch: 3, epochs: 4, log: log, collective: collective))
    for step in 0..<steps { _ = try method.afterBackward(model: model, epoch: step / 3, step: step) }
}

/// A method of the tiny ResNet-20 setup, the step after which its first decision is checked, and its bits.
private struct DecidingMethod {
    let method: any TrainingMethod
    let model: any Module
    let decisionStep: Int
    let bits: () -> [Int]

    init(_ name: String) throws {
        let setup = try TinyTrainingSetup(method: name, epochs: 4)
        let model = setup.makeModel()
        self.model = model
        switch name {
        case "msq":
            var o = MSQOptions(targetCompression: 10.67)
            o.hessian = false
            o.pruneIntervalEpochs = 1
            let m = try MSQTraining(layers: try quantizeForMSQ(model, initialBits: 8), options: o, calibration: nil, seed: 4)
            method = m
            decisionStep = 3
            bits = { m.layers.map(\.bits) }
        case "bsq":
            var o = BSQOptions(targetCompression: 10.67)
            o.pruneIntervalEpochs = 1
            let m = try BSQTraining(model: model, options: o)
            method = m
            decisionStep = 3
            bits = { m.bits }
        case "csq":
            var o = CSQOptions(targetCompression: 10.67)
            o.deadlineFraction = 0.25
            let m = try CSQTraining(model: model, options: o)
            method = m
            decisionStep = 3
            bits = { m.bits }
        case "smpq":
            var o = SMPQOptions(targetCompression: 10.67)
            o.selection = .alpha
            o.shapleyPermutations = 0
            o.searchFraction = 0.5
            o.validationBatchSize = 4
            o.shapleyBatch = 5
            let (_, validation) = try SMPQTraining.split(setup.train, options: o, seed: 4)
            let m = try SMPQTraining.setUp(model: model, options: o, context: MethodContext(
                validationData: (validation, setup.normalization), seed: 4))
            method = m
            decisionStep = 6
            bits = { m.layers.map(\.bits) }
        default:
            throw TrainingError.invalidOption("no method \(name)")
        }
    }
}

@Suite("Rank split (issue 19)", .serialized)
struct RankSplitTests {
    @Test("trace probes over P ranks: rank r evaluates probes r, r+P, … of the one-process sequence; the ranks' partial sums add up to the one-process sums; every rank stops with the one-process probe count, mid-round included",
          arguments: [TraceEstimator.hutchinson, .sampledGaussNewton], [2, 3])
    func traceProbesSplit(estimator: TraceEstimator, ranks: Int) throws {
        let maxProbes = 7, layerCount = 3
        let replica = try HessianReplica()
        // A probe seed and tolerance at which one process stops early after a count that is not a
        // multiple of P, so the last round's later probes are evaluated and dropped. (Which counts a
        // tolerance can give depends on the seed's probes, hence the search over both.)
        let tolerances = (0..<40).map { 0.8 * pow(0.8, Double($0)) }
        var midRound: (seed: UInt64, tolerance: Double)?
        search: for seed in UInt64(1)...40 {
            for tolerance in tolerances {
                let m = try replica.estimate(estimator, seed: seed, maxProbes: maxProbes, tolerance: tolerance,
                                             collective: SingleProcess()).probes
                if m < maxProbes && m % ranks != 0 {
                    midRound = (seed, tolerance)
                    break search
                }
            }
        }
        let (seed, earlyStop) = try #require(midRound, "some seed and tolerance stop one process mid-round")
        for tolerance in [0, earlyStop] {
            // One process, its per-probe terms recorded (one all-reduce per probe).
            let recorder = PeerCollective(rank: 0, size: 1, peer: nil)
            let reference = try replica.estimate(estimator, seed: seed, maxProbes: maxProbes, tolerance: tolerance, collective: recorder)
            #expect(reference == (try replica.estimate(estimator, seed: seed, maxProbes: maxProbes, tolerance: tolerance,
                                                       collective: SingleProcess())))
            #expect(tolerance == 0 ? reference.probes == maxProbes : reference.probes % ranks != 0)
            let terms = recorder.inputs
            #expect(terms.count == reference.probes && terms.allSatisfy { $0.count == layerCount })

            let (results, group) = runRanks(ranks) { collective in
                try HessianReplica().estimate(estimator, seed: seed, maxProbes: maxProbes, tolerance: tolerance, collective: collective)
            }
            let estimates = try results.map { try $0.get() }
            #expect(estimates.allSatisfy { $0 == estimates[0] }, "every rank holds the same estimate")
            for e in estimates {
                #expect(e.probes == reference.probes, "tolerance \(tolerance): the one-process probe count")
                for l in 0..<layerCount {
                    #expect(close(e.traces[l], reference.traces[l]), "layer \(l): \(e.traces[l]) vs \(reference.traces[l])")
                    #expect(close(e.variances[l], reference.variances[l]), "layer \(l): \(e.variances[l]) vs \(reference.variances[l])")
                }
            }
            // What each rank put into the all-reduces: a P × layers block per round, its own row only.
            var sums = [Double](repeating: 0, count: layerCount), squares = sums
            for r in 0..<ranks {
                let blocks = group.inputs(of: r)
                #expect(blocks.count == (reference.probes + ranks - 1) / ranks, "rank \(r) stops after the same round")
                for (round, block) in blocks.enumerated() {
                    try #require(block.count == ranks * layerCount)
                    for k in 0..<ranks where k != r {
                        #expect(block[(k * layerCount)..<((k + 1) * layerCount)].allSatisfy { $0 == 0 }, "rank \(r) evaluated only its own probes")
                    }
                    let probe = round * ranks + r
                    let row = Array(block[(r * layerCount)..<((r + 1) * layerCount)])
                    guard probe < reference.probes else { continue }  // evaluated past the stop, or none
                    #expect(zip(row, terms[probe]).allSatisfy { close($0, $1) }, "rank \(r) evaluated probe \(probe) of the one-process sequence")
                    for l in 0..<layerCount {
                        sums[l] += row[l]
                        squares[l] += row[l] * row[l]
                    }
                }
            }
            let m = Double(reference.probes)
            for l in 0..<layerCount {
                #expect(close(sums[l], m * reference.traces[l]), "the ranks' partial sums add up to the one-process sum")
                let mean = sums[l] / m
                #expect(close(max(0, squares[l] - m * mean * mean) / (m - 1) / m, reference.variances[l]))
            }
        }
    }

    @Test("inspectHessian over 2 ranks: probes and per-layer power iterations split, the one-process report on every rank")
    func inspectSplit() throws {
        let replica = try HessianReplica()
        let reference = try inspectHessian(model: replica.model, layers: replica.layers, images: replica.images,
                                           labels: replica.labels, probes: 5, seed: 3).layers
        let (results, group) = runRanks(2) { collective in
            let replica = try HessianReplica()
            return try inspectHessian(model: replica.model, layers: replica.layers, images: replica.images,
                                      labels: replica.labels, probes: 5, seed: 3, collective: collective).layers
        }
        for result in results {
            let report = try result.get()
            try #require(report.count == reference.count)
            for (a, b) in zip(report, reference) {
                #expect(a.path == b.path && a.powerIterations == b.powerIterations)
                #expect(close(a.trace, b.trace) && close(a.traceStandardError, b.traceStandardError))
                #expect(close(a.topEigenvalue, b.topEigenvalue), "\(a.path): \(a.topEigenvalue) vs \(b.topEigenvalue)")
            }
        }
        // The last all-reduce carries [λ, iterations] per layer: layers 0 and 2 from rank 0, layer 1 from rank 1.
        for r in 0..<2 {
            let eigen = try #require(group.inputs(of: r).last)
            try #require(eigen.count == 2 * reference.count)
            for l in reference.indices {
                #expect((eigen[2 * l] != 0) == (l % 2 == r), "rank \(r) ran the power iteration of layer \(l) only if it is its own")
            }
        }
    }

    @Test("Monte Carlo Shapley over P ranks: disjoint walks whose contributions add up to the one-process ones, and on every rank exactly the one-process φ, standard errors and evaluation count",
          arguments: [2, 3, 6])
    func shapleySplit(ranks: Int) throws {
        let estimator = MonteCarloShapley(permutations: 5, truncation: 0.5, seed: 17)
        let reference = estimator.estimate(playerCount: 7, estimate: 2, value: synergyGame)
        #expect(reference.evaluations < 1 + 5 * 7, "some walks truncate")
        let recorder = PeerCollective(rank: 0, size: 1, peer: nil)
        #expect(try estimator.estimate(playerCount: 7, estimate: 2, collective: recorder, value: synergyGame) == reference)
        let oneProcess = try #require(recorder.inputs.first)

        let (results, group) = runRanks(ranks) { collective in
            try estimator.estimate(playerCount: 7, estimate: 2, collective: collective, value: synergyGame)
        }
        for result in results { #expect(try result.get() == reference) }
        let contributions = (0..<ranks).map { group.inputs(of: $0) }
        #expect(contributions.allSatisfy { $0.count == 1 && $0[0].count == oneProcess.count }, "one all-reduce per estimate")
        let summed = oneProcess.indices.map { i in contributions.reduce(0.0) { $0 + $1[0][i] } }
        #expect(summed == oneProcess, "the ranks' contributions add up to the one-process walks")
        for i in oneProcess.indices {
            #expect(contributions.filter { $0[0][i] != 0 }.count <= 1, "no walk is walked on two ranks")
        }
        let working = contributions.filter { $0[0].contains { $0 != 0 } }.count
        #expect(working == min(ranks, 5), "the 5 walks are spread over the ranks")
    }

    @Test("SMPQ's supernet game over 2 ranks: every rank gets the one-process φ and evaluation count")
    func supernetShapleySplit() throws {
        let estimator = MonteCarloShapley(permutations: 3, truncation: 0.5, seed: 3)
        let reference = try smallSupernetGame().shapley(estimator, estimate: 1)
        let (results, _) = runRanks(2) { collective in
            let e = try smallSupernetGame().shapley(estimator, estimate: 1, collective: collective)
            return (e.phi, e.evaluations)
        }
        for result in results {
            let (phi, evaluations) = try result.get()
            #expect(phi == reference.phi)
            #expect(evaluations == reference.evaluations)
        }
    }

    @Test("the bit-scheme check: agreeing ranks pass; a rank with another scheme makes every rank throw replicasDiffer, the one at the others' mean too")
    func bitSchemeCheck() throws {
        let paths = ["conv1", "conv2", "fc"]
        try SingleProcess().checkSameBitScheme(paths: paths, bits: [8, 4, 2], step: 3)
        try PeerCollective(peer: { _ in bitSchemeContribution([8, 4, 2]) }).checkSameBitScheme(paths: paths, bits: [8, 4, 2], step: 3)
        #expect {
            try PeerCollective(peer: { _ in bitSchemeContribution([8, 3, 2]) }).checkSameBitScheme(paths: paths, bits: [8, 4, 2], step: 3)
        } throws: { error in
            isSchemeMismatch(error, step: 3) && "\(error)".contains("conv2 has 4 bits on rank 0") && !"\(error)".contains("conv1")
        }
        // Three ranks: rank 2 holds the mean of ranks 0 and 1 on conv2, and must throw with them.
        let schemes = [[8, 3, 2], [8, 5, 2], [8, 4, 2]]
        let (differ, _) = runRanks(3) { c in try c.checkSameBitScheme(paths: paths, bits: schemes[c.rank], step: 5) }
        for (r, result) in differ.enumerated() {
            #expect(throws: (any Error).self, "rank \(r)") { try result.get() }
            if case .failure(let error) = result { #expect(isSchemeMismatch(error, step: 5), "rank \(r): \(error)") }
        }
        let (agree, _) = runRanks(3) { c in try c.checkSameBitScheme(paths: paths, bits: [8, 4, 2], step: 5) }
        for result in agree { try result.get() }
    }

    @Test("each method's decision point checks the scheme: a peer holding the same bits passes, one holding other bits makes it throw replicasDiffer",
          arguments: ["msq", "bsq", "csq", "smpq"])
    func decisionPointsCheckScheme(method name: String) throws {
        let agreeing = try DecidingMethod(name)
        let same = peerHolding(agreeing.bits)
        try drive(agreeing.method, model: agreeing.model, steps: agreeing.decisionStep, collective: same)
        #expect(same.inputs.count == 1, "\(name): one check, at its decision point (step \(agreeing.decisionStep))")

        let differing = try DecidingMethod(name)
        let other = peerHolding {
            var bits = differing.bits()
            bits[bits.count - 1] += 1
            return bits
        }
        #expect { try drive(differing.method, model: differing.model, steps: differing.decisionStep, collective: other) } throws: {
            isSchemeMismatch($0, step: differing.decisionStep)
        }
        #expect(agreeing.bits() == differing.bits(), "the same decisions up to the check")
    }

    @Test("MSQ over 2 ranks, Hessian on: each interval's traces split over the ranks, and every rank prunes as one process does")
    func msqIntervalSplit() throws {
        /// One MSQ rank on the tiny ResNet-20 through its first pruning interval (step 3): its bits,
        /// events, and the log line of its traces (the seconds dropped).
        @Sendable func run(_ collective: any Collective) throws -> (bits: [Int], events: [PruningEvent], traces: String) {
            let setup = try TinyTrainingSetup(method: "msq", epochs: 4)
            let model = setup.makeModel()
            var o = MSQOptions(targetCompression: 10.67)
            o.hessianBatch = 8
            o.hessianProbes = 5
            o.hessianTolerance = 0
            o.pruneIntervalEpochs = 1
            let calibration = try calibrationBatch(from: setup.train, normalization: setup.normalization, count: 8)
            let method = try MSQTraining(layers: try quantizeForMSQ(model, initialBits: 8), options: o,
                                         calibration: calibration, seed: 4)
            var lines: [String] = []
            try drive(method, model: model, steps: 3, collective: collective, log: { lines.append($0) })
            let traces = lines.first { $0.contains("Hessian traces") }?
                .replacingOccurrences(of: #"[0-9.]+ s;"#, with: "", options: .regularExpression) ?? ""
            return (method.layers.map(\.bits), method.events, traces)
        }
        let reference = try run(SingleProcess())
        #expect(reference.traces.contains("5 probes"))
        #expect(!reference.events.isEmpty, "the interval prunes")
        let (results, _) = runRanks(2, run)
        for result in results {
            let rank = try result.get()
            #expect(rank.bits == reference.bits)
            #expect(rank.traces == reference.traces)
            #expect(rank.events.map(\.decision.path) == reference.events.map(\.decision.path))
            #expect(rank.events.map(\.decision.toBits) == reference.events.map(\.decision.toBits))
            for (a, b) in zip(rank.events, reference.events) {
                #expect(close(a.decision.estimatedLoss ?? 0, b.decision.estimatedLoss ?? 0))
            }
        }
    }

    @Test("HAWQ over 2 ranks: traces split, the one-process scheme on every rank; ranks asked for different targets throw replicasDiffer")
    func hawqAllocationSplit() throws {
        /// One HAWQ rank allocating at step 0 (no warm-up): its bits and traces.
        @Sendable func run(_ collective: any Collective, target: Double) throws -> (bits: [Int], traces: [Double]) {
            let setup = try TinyTrainingSetup(method: "hawq", epochs: 4)
            let model = setup.makeModel()
            var o = HAWQOptions(targetCompression: target)
            o.warmupEpochs = 0
            o.hessianBatch = 8
            o.hessianProbes = 5
            let calibration = try calibrationBatch(from: setup.train, normalization: setup.normalization, count: 8)
            let method = try HAWQTraining(layers: try quantizeForMSQ(model, initialBits: 8), options: o,
                                          calibration: calibration, seed: 4)
            try drive(method, model: model, steps: 0, collective: collective)
            return (method.layers.map(\.bits), method.summaryFields()["hawq_traces"] as? [Double] ?? [])
        }
        let reference = try run(SingleProcess(), target: 10.67)
        #expect(reference.traces.count == 20)
        let (agree, _) = runRanks(2) { try run($0, target: 10.67) }
        for result in agree {
            let rank = try result.get()
            #expect(rank.bits == reference.bits)
            #expect(zip(rank.traces, reference.traces).allSatisfy { close($0, $1) })
        }
        let (differ, _) = runRanks(2) { try run($0, target: $0.rank == 0 ? 10.67 : 6) }
        for result in differ {
            #expect(throws: (any Error).self) { try result.get() }
            if case .failure(let error) = result { #expect(isSchemeMismatch(error, step: 0), "\(error)") }
        }
    }
}
