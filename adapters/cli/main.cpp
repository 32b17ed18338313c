#include <exception>
#include <iostream>

#include "adapters/cli/cli.hpp"

int main(int argc, char** argv) {
    std::ios::sync_with_stdio(false);
    std::vector<std::string> args(argv + 1, argv + argc);
    try {
        return calcalert::cli::run(args, std::cout, std::cerr);
    } catch (const std::exception& e) {
        std::cerr << "calcalert: internal error: " << e.what() << "\n";
        return calcalert::cli::internal_error;
    }
}
