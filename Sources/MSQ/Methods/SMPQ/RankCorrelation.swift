/// Spearman's rank correlation of two equally long samples: the Pearson correlation of their
/// ranks, ties given their average rank. NaN when either sample is constant or shorter than 2
/// (no ranking to compare). SMPQ reports it between φ and α per layer (SMPQ-SPEC §5).
public func spearmanCorrelation(_ x: [Double], _ y: [Double]) -> Double {
    precondition(x.count == y.count, "spearmanCorrelation: \(x.count) and \(y.count) values")
    guard x.count >= 2 else { return .nan }
    let (rx, ry) = (averageRanks(x), averageRanks(y))
    let n = Double(x.count)
    let (mx, my) = (rx.reduce(0, +) / n, ry.reduce(0, +) / n)
    var sxy = 0.0, sxx = 0.0, syy = 0.0
    for (a, b) in zip(rx, ry) {
        sxy += (a - mx) * (b - my)
        sxx += (a - mx) * (a - mx)
        syy += (b - my) * (b - my)
    }
    guard sxx > 0, syy > 0 else { return .nan }
    return sxy / (sxx * syy).squareRoot()
}

/// 1-based ranks of `values`, each run of equal values given the mean of the ranks it spans.
func averageRanks(_ values: [Double]) -> [Double] {
    let order = values.indices.sorted { values[$0] < values[$1] }
    var ranks = [Double](repeating: 0, count: values.count)
    var i = 0
    while i < order.count {
        var j = i
        while j + 1 < order.count && values[order[j + 1]] == values[order[i]] { j += 1 }
        let rank = Double(i + j) / 2 + 1
        for k in i...j { ranks[order[k]] = rank }
        i = j + 1
    }
    return ranks
}
