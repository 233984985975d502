import Foundation

/// A run's output directory and what the ``Trainer`` does with it: checkpoint, metrics, summary.
struct RunDirectory {
    /// The directory, as given.
    let path: String
    /// Where the trainer's progress lines go.
    let log: (String) -> Void

    var checkpointPath: String { (path as NSString).appendingPathComponent(Trainer.checkpointName) }
    var metricsPath: String { (path as NSString).appendingPathComponent("metrics.jsonl") }
    var summaryPath: String { (path as NSString).appendingPathComponent("summary.json") }

    /// Creates the output directory if needed, proves it writable, removes this program's own
    /// stale temporary checkpoints, and refuses to overwrite a run without `resume`. Every
    /// failure names the path and the system's reason (no Foundation error text).
    func prepare(resume: Bool) throws(TrainingError) {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else {
                throw .outputDirectory("output directory \(path) exists and is not a directory")
            }
            if !resume, FileManager.default.fileExists(atPath: checkpointPath) {
                throw .existingCheckpoint(directory: path)
            }
        } else if let problem = makeDirectories(path) {
            throw .outputDirectory("cannot create the output directory \(path): \(problem)")
        }
        if let problem = probeWritable(path) {
            throw .outputDirectory("the output directory \(path) is not writable: \(problem)")
        }
        removeStaleTemporaryCheckpoints()
        if !resume { unlink(metricsPath) }
    }

    /// Deletes `checkpoint.msqckpt.tmp-PID` files (the atomic writer's temporary name) whose
    /// process no longer runs: a kill during a write leaves one of these (2 MB for ResNet-20),
    /// and nothing else would ever remove it. Other files are never touched.
    func removeStaleTemporaryCheckpoints() {
        let prefix = Trainer.checkpointName + ".tmp-"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { return }
        for name in names where name.hasPrefix(prefix) {
            let digits = name.dropFirst(prefix.count)
            guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber),
                  let pid = Int32(digits) else { continue }
            // A live writer (another msq on the same directory) keeps its file.
            if pid != getpid(), kill(pid, 0) == 0 || errno == EPERM { continue }
            let file = (path as NSString).appendingPathComponent(name)
            if unlink(file) == 0 { log("removed a stale temporary checkpoint \(file) (left by a killed run)") }
        }
    }

    /// Appends one JSON line to `metrics.jsonl` (non-finite numbers written as null).
    func appendMetrics(_ fields: [String: Any]) throws(TrainingError) {
        let line: Data
        do {
            line = try JSONSerialization.data(withJSONObject: jsonSafe(fields), options: [.sortedKeys]) + Data("\n".utf8)
        } catch {
            throw .outputDirectory("cannot encode the metrics of \(metricsPath): \(error)")
        }
        let fd = open(metricsPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        guard fd >= 0 else { throw .outputDirectory("cannot write \(metricsPath): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        if let problem = writeAll(fd, [UInt8](line)) { throw .outputDirectory("cannot write \(metricsPath): \(problem)") }
    }

    /// Keeps only the metrics of epochs the checkpoint covers (a kill between the metrics line
    /// and the checkpoint would otherwise leave a duplicate line after resuming).
    func truncateMetrics(toEpochs epochs: Int) throws(TrainingError) {
        guard let text = try? String(contentsOfFile: metricsPath, encoding: .utf8) else { return }
        let kept = text.split(separator: "\n").filter { line in
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let e = obj["epoch"] as? Int else { return false }
            return e <= epochs
        }
        if let problem = atomicWrite(Array(kept.map { $0 + "\n" }.joined().utf8), to: metricsPath) {
            throw .outputDirectory("cannot rewrite \(metricsPath): \(problem)")
        }
    }
}

/// Writes a JSON object atomically, keys sorted, pretty-printed; non-finite numbers become null
/// (JSONSerialization refuses them, which once lost a whole run's summary).
public func writeJSON(_ object: [String: Any], to path: String) throws(TrainingError) {
    let data: Data
    do {
        data = try JSONSerialization.data(withJSONObject: jsonSafe(object), options: [.sortedKeys, .prettyPrinted])
    } catch {
        throw .outputDirectory("cannot encode \(path) as JSON: \(error)")
    }
    if let problem = atomicWrite([UInt8](data + Data("\n".utf8)), to: path) {
        throw .outputDirectory("cannot write \(path): \(problem)")
    }
}

/// `value` with every non-finite Double or Float (at any depth) replaced by `NSNull`.
func jsonSafe(_ value: Any) -> Any {
    switch value {
    case let d as Double: return d.isFinite ? d : NSNull()
    case let f as Float: return f.isFinite ? f : NSNull()
    case let dict as [String: Any]: return dict.mapValues(jsonSafe)
    case let array as [Any]: return array.map(jsonSafe)
    default: return value
    }
}

/// Creates `path` and its missing parents; nil on success, else the component that failed and
/// the system's reason (`runs/afile: Not a directory`).
func makeDirectories(_ path: String) -> String? {
    var current = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/", omittingEmptySubsequences: true) {
        current += (current.isEmpty || current.hasSuffix("/") ? "" : "/") + component
        if mkdir(current, 0o755) != 0 && errno != EEXIST {
            return "\(current): \(String(cString: strerror(errno)))"
        }
        var isDir: ObjCBool = false
        if !FileManager.default.fileExists(atPath: current, isDirectory: &isDir) || !isDir.boolValue {
            return "\(current) is not a directory"
        }
    }
    return nil
}

/// Creates, writes and removes a probe file in `directory`; nil when that works, else the
/// system's reason. Permissions alone do not answer this (root, read-only mounts, full disks).
func probeWritable(_ directory: String) -> String? {
    let probe = (directory as NSString).appendingPathComponent(".msq-write-probe-\(getpid())")
    let fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { return String(cString: strerror(errno)) }
    let problem = writeAll(fd, [0x0A])
    close(fd)
    unlink(probe)
    return problem
}

/// Writes all of `bytes` to `fd`; nil on success, else the system's reason.
func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> String? {
    var written = 0
    return bytes.withUnsafeBytes { raw -> String? in
        while written < raw.count {
            let n = write(fd, raw.baseAddress! + written, raw.count - written)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return String(cString: strerror(n < 0 ? errno : ENOSPC)) }
            written += n
        }
        return nil
    }
}
