// `calcalert smart keygen|jwks`: the client key of SMART Backend Services and the JWK Set a site
// registers for it.
#include <sys/stat.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "adapters/cli/cli.hpp"
#include "adapters/cli/commands.hpp"
#include "auth/smart_backend.hpp"
#include "jose/jws.hpp"

namespace calcalert::cli {
namespace {

const char* const kSmartHelp = R"(Usage: calcalert smart keygen --out FILE [--alg ES384|RS384]
       calcalert smart jwks --key FILE

SMART Backend Services keys (for poll and alerts: --smart-client-id ID --smart-key FILE).
  keygen   writes a new private key to FILE (PEM, mode 0600; an existing file is not overwritten)
           and prints its public JWK Set, to register with the FHIR server's authorization server
  jwks     prints the public JWK Set of an existing key
The kid is the key's RFC 7638 thumbprint, the same in the JWK Set and in every assertion.
  --alg ES384 (default: an EC P-384 key) or RS384 (an RSA 3072-bit key)

Exit codes: 0 success, 2 usage error, 3 the key file cannot be read or written.
)";

void write_new_file(const std::string& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error(path + ": " + std::strerror(errno) + (errno == EEXIST ? " (not overwritten)" : ""));
    std::size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const std::string why = std::strerror(errno);
            ::close(fd);
            ::unlink(path.c_str());
            throw std::runtime_error(path + ": " + why);
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) throw std::runtime_error(path + ": " + std::strerror(errno));
}

}  // namespace

int smart_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
    Options opts(args, {"out", "alg", "key"}, {"help"});
    if (opts.flag("help") || opts.positional().empty()) {
        out << kSmartHelp;
        return opts.flag("help") ? ok : usage_error;
    }
    const std::string sub = opts.positional()[0];
    if (opts.positional().size() > 1) throw UsageError("smart " + sub + " takes no more arguments");
    try {
        if (sub == "keygen") {
            const auto path = opts.value("out");
            if (!path) throw UsageError("smart keygen needs --out FILE");
            const std::string alg = opts.value("alg").value_or("ES384");
            if (alg != "ES384" && alg != "RS384") throw UsageError("--alg must be ES384 or RS384, not '" + alg + "'");
            jose::PrivateKey key = alg == "ES384" ? jose::generate_es384_key("") : jose::generate_rs384_key("", 3072);
            key.kid = jose::jwk_thumbprint(key);
            write_new_file(*path, jose::private_key_pem(key));
            out << auth::client_jwks(key) << "\n";
            err << "calcalert: wrote " << *path << " (" << alg << ", kid " << key.kid << "); register the JWK Set above\n";
            return ok;
        }
        if (sub == "jwks") {
            const auto path = opts.value("key");
            if (!path) throw UsageError("smart jwks needs --key FILE");
            jose::PrivateKey key = jose::load_private_key_pem(*path, "");
            key.kid = jose::jwk_thumbprint(key);
            out << auth::client_jwks(key) << "\n";
            return ok;
        }
    } catch (const UsageError&) {
        throw;
    } catch (const std::exception& e) {
        err << "calcalert: " << e.what() << "\n";
        return input_error;
    }
    throw UsageError("unknown smart subcommand '" + sub + "' (keygen or jwks)");
}

}  // namespace calcalert::cli
