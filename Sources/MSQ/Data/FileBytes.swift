import CGzip
import Foundation

/// Whole-file reads and writes through the CGzip helper, mapped to ``DataError``.
enum FileBytes {
    /// The bytes of `path`, gunzipped when the file is gzip-compressed.
    static func read(_ path: String) throws(DataError) -> [UInt8] {
        // zlib would otherwise report a directory as "corrupt gzip data".
        if isDirectory(path) { throw .unreadable(path: path, reason: "it is a directory, not a data file") }
        var buffer: UnsafeMutablePointer<UInt8>?
        var length = 0
        var err = [CChar](repeating: 0, count: 512)
        let rc = msq_read_file_maybe_gzip(path, &buffer, &length, &err, err.count)
        defer { msq_gzip_free(buffer) }
        let reason = cString(err)
        switch rc {
        case 0:
            guard let buffer else { return [] }
            return Array(UnsafeBufferPointer(start: buffer, count: length))
        case -3: throw .corruptGzip(path: path, reason: reason)
        default: throw .unreadable(path: path, reason: reason)
        }
    }

    /// Writes `bytes` to `path`, gzip-compressed when `compressed` is true.
    static func write(_ bytes: [UInt8], to path: String, compressed: Bool) throws(DataError) {
        if compressed {
            var err = [CChar](repeating: 0, count: 512)
            let rc = bytes.withUnsafeBufferPointer { msq_write_file_gzip(path, $0.baseAddress, $0.count, &err, err.count) }
            if rc != 0 { throw .writeFailed(path: path, reason: cString(err)) }
        } else {
            do {
                try Data(bytes).write(to: URL(fileURLWithPath: path))
            } catch {
                throw .writeFailed(path: path, reason: error.localizedDescription)
            }
        }
    }

    /// Whether `path` exists and is a directory.
    static func isDirectory(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
    }

    /// Whether `path` exists (as anything).
    static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    /// Joins a directory and a file name without doubling the separator.
    static func join(_ directory: String, _ file: String) -> String {
        directory.hasSuffix("/") ? directory + file : directory + "/" + file
    }

    private static func cString(_ chars: [CChar]) -> String {
        String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
