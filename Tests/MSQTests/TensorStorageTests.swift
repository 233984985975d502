import MSQ
import Testing

// Tensor storage: large buffers are recycled between tensors (BufferPool), so a new tensor must
// never show a dead tensor's values, and copy-on-write must copy every element.

/// 2^20 floats = 4 MiB: above the pool's 1 MiB minimum, so these buffers are recycled.
private let pooledCount = 1 << 20

@Suite("Tensor storage")
struct TensorStorageTests {
    @Test("a tensor that reuses a dead tensor's buffer starts zeroed or at its fill value")
    func recycledBuffersAreFilled() {
        for round in 0..<3 {
            do {
                let dirty = Tensor(shape: [pooledCount], repeating: 7)
                #expect(dirty[flat: pooledCount - 1] == 7)
            } // dirty's buffer goes back to the pool here
            let zeros = Tensor(shape: [pooledCount])
            #expect(zeros.scalars.allSatisfy { $0 == 0 }, "round \(round): recycled buffer not zeroed")
            let filled = Tensor(shape: [pooledCount], repeating: -1.5)
            #expect(filled.scalars.allSatisfy { $0 == -1.5 }, "round \(round)")
        }
    }

    @Test("copy-on-write copies every element of a large tensor")
    func copyOnWrite() {
        var a = Tensor(shape: [pooledCount], repeating: 3)
        let b = a
        a[flat: 0] = 4
        #expect(b[flat: 0] == 3 && a[flat: 0] == 4)
        #expect(a.scalars.dropFirst().allSatisfy { $0 == 3 })
        #expect(b.scalars.allSatisfy { $0 == 3 })
    }

    @Test("a dead tensor's buffer goes to the next tensor of its size; live + held never passes the peak of live bytes")
    func poolRecyclesWithinPeak() {
        let count = (3 << 20) / 4 + 17  // an odd size of 3 MiB and a bit, used by no other test
        let bytes = count * MemoryLayout<Float>.stride
        func withinPeak(_ m: (live: Int, held: Int, peak: Int)) -> Bool { m.live + m.held <= m.peak }
        #expect(withinPeak(TensorMemory.pooled))
        do {
            let a = Tensor(shape: [count], repeating: 2)
            #expect(a[flat: count - 1] == 2 && TensorMemory.pooled.live >= bytes && withinPeak(TensorMemory.pooled))
        }
        let released = TensorMemory.pooled
        #expect(released.held >= bytes && withinPeak(released))
        do {
            let b = Tensor(shape: [count])
            let reused = TensorMemory.pooled
            #expect(reused.held == released.held - bytes, "the second tensor of that size takes the held buffer")
            #expect(reused.live == released.live + bytes && reused.peak == released.peak && b[flat: 0] == 0)
        }
        #expect(withinPeak(TensorMemory.pooled))
    }
}
