import MSQ
import Testing

// SMPQ-SPEC §4: the budgeted selection, against brute force on small cases.

@Suite("SMPQ selection")
struct SMPQSelectionTests {
    @Test("the selection attains the brute-force optimum of Σ score under the budget, at several targets")
    func againstBruteForce() throws {
        let candidates = [2, 3, 4, 5, 6, 8]
        var rng = RandomSource(seed: 21)
        for trial in 0..<12 {
            let counts = (0..<4).map { _ in 3 + rng.nextInt(below: 40) }
            let scores = counts.map { _ in candidates.map { _ in Double(rng.nextUnitFloat()) - 0.3 } }
            let target = [4.5, 6, 8, 10.67, 14][trial % 5]
            let budget = 32 * Double(counts.reduce(0, +)) / target
            var best = -Double.infinity
            func walk(_ l: Int, _ size: Int, _ score: Double) {
                if Double(size) > budget + 1e-9 { return }
                if l == counts.count { best = max(best, score); return }
                for (j, b) in candidates.enumerated() { walk(l + 1, size + counts[l] * b, score + scores[l][j]) }
            }
            walk(0, 0, 0)
            let bits = try #require(selectPrecisions(scores: scores, candidates: candidates, counts: counts, targetCompression: target))
            let size = zip(counts, bits).reduce(0) { $0 + $1.0 * $1.1 }
            let achieved = zip(scores, bits).reduce(0.0) { $0 + $1.0[candidates.firstIndex(of: $1.1)!] }
            #expect(Double(size) <= budget + 1e-9)
            #expect(abs(achieved - best) < 1e-9, "trial \(trial): \(achieved) vs \(best)")
        }
    }

    @Test("DMPQ: per-layer argmax α when it fits the budget; nil when even 2 bits everywhere do not; mismatched shapes refused")
    func argmaxAndRefusals() {
        let alpha = [[0.1, 0.9, 0.2], [0.8, 0.1, 0.3]]
        #expect(selectPrecisions(scores: alpha, candidates: [2, 4, 8], counts: [10, 10], targetCompression: 8) == [4, 2])
        #expect(selectPrecisions(scores: alpha, candidates: [2, 4, 8], counts: [10, 10], targetCompression: 17) == nil)
        #expect(selectPrecisions(scores: [[0.1, 0.9]], candidates: [2, 4, 8], counts: [10], targetCompression: 8) == nil)
        #expect(SMPQSelection(rawValue: "alpha") == .alpha && SMPQSelection.allCases.count == 2)
    }
}
