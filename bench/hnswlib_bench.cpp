// hnswlib_bench.cpp - the peer side of bench/run_hnsw.sh: hnswlib (Debian's
// libhnswlib-dev, header-only) on a TEXMEX data directory, one thread.
//
// usage: hnswlib_bench DIR [--M 16] [--ef-construction 200] [--k 10]
//                          [--ef 10,16,32,...] [--repeat 3]
//
// Reads DIR/base.fvecs, DIR/query.fvecs, DIR/groundtruth.ivecs; builds
// HierarchicalNSW<float> over L2Space (points added in file order, label =
// row, one thread); then for each ef of the sweep searches every query
// with searchKnn, one query per call, --repeat passes, and prints one JSON
// line per ef:
//   {"index":"hnswlib","ef":E,"recall_at_k":R,"qps":Q,"p50_us":P,"build_s":B}
// recall@k = |returned ∩ first k of the ground truth| / k, averaged; qps =
// queries / wall time of the best pass; p50 from that pass.  This matches
// how `quiverbench offline --batch 1 --repeat R` measures Quiver.
#include <hnswlib/hnswlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Vecs {
    size_t n = 0, dim = 0;
    std::vector<float> f;     // fvecs
    std::vector<int32_t> i;   // ivecs
};

bool read_vecs(const std::string &path, bool ints, Vecs &out)
{
    FILE *fp = std::fopen(path.c_str(), "rb");
    if (!fp) {
        std::fprintf(stderr, "hnswlib_bench: cannot open %s\n", path.c_str());
        return false;
    }
    int32_t d;
    while (std::fread(&d, 4, 1, fp) == 1) {
        if (d <= 0 || (out.dim && (size_t)d != out.dim)) {
            std::fprintf(stderr, "hnswlib_bench: %s: bad record dimension %d\n",
                         path.c_str(), d);
            std::fclose(fp);
            return false;
        }
        out.dim = (size_t)d;
        size_t at = out.n * out.dim;
        bool ok;
        if (ints) {
            out.i.resize(at + out.dim);
            ok = std::fread(&out.i[at], 4, out.dim, fp) == out.dim;
        } else {
            out.f.resize(at + out.dim);
            ok = std::fread(&out.f[at], 4, out.dim, fp) == out.dim;
        }
        if (!ok) {
            std::fprintf(stderr, "hnswlib_bench: %s: truncated record %zu\n",
                         path.c_str(), out.n);
            std::fclose(fp);
            return false;
        }
        out.n++;
    }
    std::fclose(fp);
    return out.n > 0;
}

double now_s()
{
    return std::chrono::duration<double>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<size_t> parse_list(const char *s)
{
    std::vector<size_t> v;
    while (*s) {
        char *end;
        unsigned long x = std::strtoul(s, &end, 10);
        if (end == s)
            break;
        v.push_back(x);
        s = *end == ',' ? end + 1 : end;
    }
    return v;
}

}  // namespace

int main(int argc, char **argv)
{
    if (argc < 2) {
        std::fprintf(stderr, "usage: hnswlib_bench DIR [--M 16] [--ef-construction 200] "
                             "[--k 10] [--ef 10,16,...] [--repeat 3]\n");
        return 2;
    }
    std::string dir = argv[1];
    size_t M = 16, efc = 200, k = 10, repeat = 3;
    std::vector<size_t> efs = { 10, 16, 20, 24, 32, 40, 48, 64, 100, 128, 200 };
    for (int a = 2; a + 1 < argc; a += 2) {
        std::string f = argv[a];
        if (f == "--M")
            M = std::strtoul(argv[a + 1], nullptr, 10);
        else if (f == "--ef-construction")
            efc = std::strtoul(argv[a + 1], nullptr, 10);
        else if (f == "--k")
            k = std::strtoul(argv[a + 1], nullptr, 10);
        else if (f == "--ef")
            efs = parse_list(argv[a + 1]);
        else if (f == "--repeat")
            repeat = std::strtoul(argv[a + 1], nullptr, 10);
        else {
            std::fprintf(stderr, "hnswlib_bench: unknown flag %s\n", f.c_str());
            return 2;
        }
    }
    Vecs base, query, gt;
    if (!read_vecs(dir + "/base.fvecs", false, base) ||
        !read_vecs(dir + "/query.fvecs", false, query) ||
        !read_vecs(dir + "/groundtruth.ivecs", true, gt))
        return 1;
    if (query.dim != base.dim || gt.n < query.n || gt.dim < k) {
        std::fprintf(stderr, "hnswlib_bench: %s: shapes do not match\n", dir.c_str());
        return 1;
    }
    const size_t n = base.n, dim = base.dim, nq = query.n;

    hnswlib::L2Space space(dim);
    double t0 = now_s();
    hnswlib::HierarchicalNSW<float> index(&space, n, M, efc, 100);
    for (size_t i = 0; i < n; i++)
        index.addPoint(&base.f[i * dim], (hnswlib::labeltype)i);
    double build_s = now_s() - t0;

    std::vector<double> lat(nq), best_lat(nq);
    for (size_t ef : efs) {
        if (ef < k)
            continue;
        index.setEf(ef);
        double best_qps = 0, recall = 0;
        for (size_t r = 0; r < repeat; r++) {
            size_t hits = 0;
            double p0 = now_s();
            for (size_t q = 0; q < nq; q++) {
                double a = now_s();
                auto res = index.searchKnn(&query.f[q * dim], k);
                lat[q] = (now_s() - a) * 1e6;
                const int32_t *g = &gt.i[q * gt.dim];
                while (!res.empty()) {
                    size_t label = res.top().second;
                    res.pop();
                    for (size_t t = 0; t < k; t++)
                        hits += (size_t)g[t] == label;
                }
            }
            double qps = (double)nq / (now_s() - p0);
            recall = (double)hits / (double)(nq * k);
            if (qps > best_qps) {
                best_qps = qps;
                best_lat = lat;
            }
        }
        std::sort(best_lat.begin(), best_lat.end());
        std::printf("{\"index\":\"hnswlib\",\"ef\":%zu,\"recall_at_k\":%.4f,\"qps\":%.1f,"
                    "\"p50_us\":%.2f,\"build_s\":%.3f,\"M\":%zu,\"ef_construction\":%zu,"
                    "\"n\":%zu,\"dim\":%zu,\"nq\":%zu}\n",
                    ef, recall, best_qps, best_lat[nq / 2], build_s, M, efc, n, dim, nq);
        std::fflush(stdout);
    }
    return 0;
}
