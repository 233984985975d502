import MSQ
import Testing

@Suite("Dataset split (SMPQ's validation part)")
struct DatasetSplitTests {
    @Test("the parts are disjoint, cover the set, hold round(f·N) validation samples with the base's samples and labels, and depend on the seed only")
    func split() throws {
        let data = try SyntheticDataset(count: 97, sampleShape: [1, 4, 4], numClasses: 3, seed: 1)
        let (train, validation) = try randomSplit(data, validationFraction: 0.1, seed: 7)
        #expect(validation.count == 10 && train.count == 87)
        #expect(Set(train.indices).isDisjoint(with: validation.indices))
        #expect(Set(train.indices + validation.indices) == Set(0..<97))
        #expect(train.indices == train.indices.sorted() && validation.indices == validation.indices.sorted())
        for i in [0, 5, 9] {
            #expect(validation.sample(i).scalars == data.sample(validation.indices[i]).scalars)
            #expect(validation.label(i) == data.label(validation.indices[i]))
        }
        #expect(validation.name == data.name + "/validation" && validation.sampleShape == [1, 4, 4] && validation.numClasses == 3)
        #expect(try randomSplit(data, validationFraction: 0.1, seed: 7).validation.indices == validation.indices)
        #expect(try randomSplit(data, validationFraction: 0.1, seed: 8).validation.indices != validation.indices)
    }

    @Test("a fraction outside (0, 1), one that leaves a part empty, or an index outside the base is refused")
    func refusals() throws {
        let data = try SyntheticDataset(count: 5, sampleShape: [1, 4, 4], numClasses: 3, seed: 1)
        for f in [0, 1, -0.5, .nan, 0.05, 0.95] {
            #expect(throws: DataError.self) { try randomSplit(data, validationFraction: f, seed: 0) }
        }
        #expect(throws: DataError.self) { try DatasetSubset(data, indices: [0, 5], part: "x") }
    }
}
