import Foundation
import MSQ
import Testing

private func layer(_ path: String, _ count: Int, _ bits: Int, _ r: Double, k: Int = 1) -> PruningLayerStatus {
    PruningLayerStatus(path: path, count: count, bits: bits, nonzeroRate: r, k: k)
}

@Suite struct LSBPruningSchedulerTests {
    @Test("Candidates under τ are pruned by k in ascending r; layers above τ are left alone without a budget")
    func naturalPruningAscending() {
        let s = LSBPruningScheduler(targetCompression: 16, threshold: 0.05)
        let d = s.decide([layer("a", 100, 8, 0.04), layer("b", 100, 8, 0.01, k: 2), layer("c", 100, 8, 0.5)],
                         budgetBits: nil, deadline: false)
        #expect(d.map(\.path) == ["b", "a"])
        #expect(d.map(\.toBits) == [6, 7])
        #expect(d.allSatisfy { !$0.forced })
    }

    @Test("Pruning stops as soon as the target compression is reached")
    func stopsAtTarget() {
        // 3 layers of 100 at 4 bits: C = 8. Target 8.5 needs Σ N n ≤ 32·300/8.5 = 1129.4, i.e. one layer → 3.
        let s = LSBPruningScheduler(targetCompression: 8.5, threshold: 0.1)
        let d = s.decide([layer("a", 100, 4, 0.02), layer("b", 100, 4, 0.01), layer("c", 100, 4, 0.03)],
                         budgetBits: nil, deadline: false)
        #expect(d.map(\.path) == ["b"])
        #expect(s.decide([layer("a", 100, 3, 0), layer("b", 100, 3, 0)], budgetBits: nil, deadline: false).isEmpty,
                "C = 10.67 ≥ 8.5: nothing to do")
    }

    @Test("Never below n_min; k is capped by the floor")
    func floor() {
        let s = LSBPruningScheduler(targetCompression: 16, threshold: 0.05, minBits: 2)
        let d = s.decide([layer("a", 10, 3, 0, k: 2), layer("b", 10, 2, 0, k: 2)], budgetBits: nil, deadline: false)
        #expect(d == [PruningDecision(path: "a", fromBits: 3, toBits: 2, nonzeroRate: 0, forced: false)])
    }

    @Test("Pacing forces the lowest-r layers above τ until the budget is met, each at most once per interval")
    func pacing() {
        let s = LSBPruningScheduler(targetCompression: 16, threshold: 0.05)
        let layers = [layer("a", 100, 8, 0.30), layer("b", 100, 8, 0.10), layer("c", 100, 8, 0.20)]
        // Budget 2200 bits: from 2400 one forced prune of 100 weights by 1 bit is not enough, two are.
        let d = s.decide(layers, budgetBits: 2200, deadline: false)
        #expect(d.map(\.path) == ["b", "c"])
        #expect(d.allSatisfy { $0.forced })
        // An impossible budget before the deadline prunes every layer once, no more.
        let all = s.decide(layers, budgetBits: 0, deadline: false)
        #expect(all.count == 3)
        #expect(Set(all.map(\.path)).count == 3)
    }

    @Test("At the deadline the target is always met, repeating rounds if needed")
    func deadline() {
        let s = LSBPruningScheduler(targetCompression: 10.67, threshold: 0.05)
        let layers = [layer("a", 1000, 8, 0.3), layer("b", 10, 8, 0.2, k: 2), layer("c", 500, 7, 0.4)]
        let d = s.decide(layers, budgetBits: nil, deadline: true)
        var bits = Dictionary(uniqueKeysWithValues: layers.map { ($0.path, $0.bits) })
        for e in d {
            #expect(bits[e.path] == e.fromBits, "decisions chain per layer")
            bits[e.path] = e.toBits
        }
        let final = layers.map { bits[$0.path] ?? 0 }
        #expect(LSBPruningScheduler.compression(counts: layers.map(\.count), bits: final) >= 10.67)
        #expect(d.allSatisfy { $0.forced })
        // Undoing the last decision must leave the target unmet (no needless pruning).
        if let last = d.last {
            bits[last.path] = last.fromBits
            let before = layers.map { bits[$0.path] ?? 0 }
            #expect(LSBPruningScheduler.compression(counts: layers.map(\.count), bits: before) < 10.67)
        }
    }

    @Test("Compression figures: C = 32 ΣN / ΣN n")
    func compression() {
        #expect(abs(LSBPruningScheduler.compression(counts: [10, 30], bits: [8, 2]) - 32.0 * 40 / 140) < 1e-12)
        let s = LSBPruningScheduler(targetCompression: 10.67, threshold: 0)
        #expect(abs(s.targetBits(counts: [300]) - 32.0 * 300 / 10.67) < 1e-9)
    }
}
