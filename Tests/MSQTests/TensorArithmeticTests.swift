import MSQ
import Testing

@Suite("Tensor arithmetic")
struct TensorArithmeticTests {
    @Test("element-wise + − ×, scalar forms, compound assignment, sum and mean against plain arrays, at an odd size")
    func elementWise() {
        let xs: [Float] = (0..<15).map { Float($0) * 0.5 - 3 }
        let ys: [Float] = (0..<15).map { Float(($0 * 7) % 11) - 4.25 }
        let a = Tensor(shape: [3, 5], scalars: xs), b = Tensor(shape: [3, 5], scalars: ys)
        #expect((a + b).scalars == zip(xs, ys).map { $0 + $1 })
        #expect((a - b).scalars == zip(xs, ys).map { $0 - $1 })
        #expect((a * b).scalars == zip(xs, ys).map { $0 * $1 })
        #expect((2.5 * a).scalars == xs.map { 2.5 * $0 } && (a * 2.5).scalars == xs.map { $0 * 2.5 })
        #expect((a + 1).scalars == xs.map { $0 + 1 })
        #expect((a + b).shape == [3, 5])
        var c = a
        c += b
        #expect(c.scalars == (a + b).scalars)
        c -= b
        #expect(c.scalars == zip(zip(xs, ys).map { $0 + $1 }, ys).map { $0 - $1 })
        #expect(a.scalars == xs)  // value semantics: the operands are untouched
        #expect(a.sum() == xs.reduce(0.0) { $0 + Double($1) })
        #expect(a.mean() == a.sum() / 15)
        #expect(Tensor(shape: [0]).mean().isNaN)
        #expect(a.map { max($0, 0) }.scalars == xs.map { max($0, 0) })
    }
}
