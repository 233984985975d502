import MSQ
import Testing

// The `identity` dictionaries are the run fingerprints stored in checkpoints: a resumed run is
// refused when they differ, so their keys and value formatting must never drift (a refactor that
// changed "1.0" to "1" would make every existing checkpoint unresumable).
@Suite("Run fingerprints")
struct OptionsIdentityTests {
    @Test("MSQOptions' identity keys and values are pinned")
    func msq() {
        #expect(MSQOptions(targetCompression: 10.67).identity == [
            "msq.target_compression": "10.67", "msq.lambda": "1.0", "msq.prune_threshold": "0.05",
            "msq.prune_interval": "0.2", "msq.prune_deadline": "0.2", "msq.min_bits": "2",
            "msq.hessian": "true", "msq.hessian_batch": "64", "msq.hessian_probes": "8",
            "msq.hessian_tolerance": "0.05", "msq.lambda_growth": "1.0",
            "msq.lambda_scaling": "uniform", "msq.forced_order": "estimated-loss",
            "msq.hessian_trace": "sampled-gauss-newton",
        ])
    }

    @Test("--preset paper is MSQ-SPEC read literally: 0.5-epoch intervals, deadline at 60 %, lowest-r forcing, one λ, Hutchinson traces")
    func msqPaperPreset() {
        let paper = MSQOptions.paper(targetCompression: 10.67).identity
        let standard = MSQOptions(targetCompression: 10.67).identity
        #expect(paper["msq.forced_order"] == "nonzero-rate")
        #expect(paper["msq.lambda_scaling"] == "uniform")
        #expect(paper["msq.hessian_trace"] == "hutchinson")
        #expect(paper["msq.prune_interval"] == "0.5")
        #expect(paper["msq.prune_deadline"] == "0.6")
        let differing = Set(paper.keys).filter { paper[$0] != standard[$0] }
        #expect(differing == ["msq.forced_order", "msq.hessian_trace", "msq.prune_interval", "msq.prune_deadline"],
                "only the allocation rules and the pace differ")
    }

    @Test("BSQOptions' identity keys and values are pinned")
    func bsq() {
        #expect(BSQOptions(targetCompression: 10.67).identity == [
            "bsq.target_compression": "10.67", "bsq.weight_bits": "9", "bsq.lambda": "0.01",
            "bsq.prune_threshold": "0.0", "bsq.prune_interval": "0.5", "bsq.prune_deadline": "0.6",
            "bsq.min_bits": "2",
        ])
    }

    @Test("CSQOptions' identity keys and values are pinned")
    func csq() {
        #expect(CSQOptions(targetCompression: 10.67).identity == [
            "csq.target_compression": "10.67", "csq.weight_bits": "9", "csq.lambda": "1.0",
            "csq.prune_interval": "0.5", "csq.prune_deadline": "0.6", "csq.min_bits": "2",
            "csq.final_temperature": "200.0", "csq.bit_logit_init": "1.0", "csq.mask_logit_init": "0.0",
        ])
    }

    @Test("DoReFaOptions' identity keys and values are pinned")
    func doReFa() {
        #expect(DoReFaOptions(weightBits: 3).identity == ["dorefa.weight_bits": "3", "dorefa.scaled": "false"])
    }
}
