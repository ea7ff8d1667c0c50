import Glibc

/// Reads a whole UTF-8 text file of at most `ConfigurationFile.maxBytes`.
func readTextFile(_ path: String) throws(ConfigurationError) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw ConfigurationError(path: path, line: 0, String(cString: strerror(errno))) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 8192)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count < 0 && errno == EINTR { continue }
        guard count >= 0 else { throw ConfigurationError(path: path, line: 0, String(cString: strerror(errno))) }
        if count == 0 { break }
        bytes += chunk[0..<count]
        guard bytes.count <= ConfigurationFile.maxBytes else {
            throw ConfigurationError(path: path, line: 0, "file is larger than \(ConfigurationFile.maxBytes) bytes")
        }
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        throw ConfigurationError(path: path, line: 0, "not UTF-8 text")
    }
    return text
}
