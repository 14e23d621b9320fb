// Host check of the CUDA attention kernels' fragment index math (csrc/cuda/attention_layout.h),
// compiled with g++ by tests/test_cuda_compile.py: the two PTX instructions the kernels build on are
// emulated here from the PTX ISA's description, independently of zenattn's code:
//   ldmatrix.sync.aligned.m8n8.x4[.trans].b16: lanes 8i..8i+7 give the row addresses of matrix i;
//     lane L receives, of matrix i, elements (L/4, 2(L%4)) and (L/4, 2(L%4)+1), or with .trans
//     (2(L%4), L/4) and (2(L%4)+1, L/4);
//   mma.sync.aligned.m16n8k16.row.col: with g = L/4, t = L%4, A registers hold (g, 2t..2t+1),
//     (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..); B registers (2t..2t+1, g), (2t+8..2t+9, g);
//     C/D elements (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
// Then S = Q K^T and O = P V are computed the way the kernels do, through layout.h's lane
// addresses and accumulator mapping, and compared with plain matrix products. Prints "ok".
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/attention_layout.h"

using namespace zenattn::cuda::layout;

namespace {

struct Pair {
  double lo, hi;  // the two 16-bit elements of one 32-bit register
};
using Regs4 = Pair[32][4];

struct Tile {
  int rows, cols;
  std::vector<double> v;
  Tile(int r, int c) : rows(r), cols(c), v(size_t(r) * c) {
    for (auto& x : v) x = std::rand() / double(RAND_MAX) - 0.5;
  }
  double at(int r, int c) const {
    if (r < 0 || r >= rows || c < 0 || c >= cols) {
      std::printf("address out of the tile: (%d, %d) of %dx%d\n", r, c, rows, cols);
      std::exit(1);
    }
    return v[size_t(r) * cols + c];
  }
};

// ldmatrix .x4: addr[L] is lane L's row address as (row, col) of `tile`.
void ldmatrix_x4(Regs4& out, const Tile& tile, const RowCol (&addr)[32], bool trans) {
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      auto m = [&](int r, int c) { return tile.at(addr[8 * i + r].row, addr[8 * i + r].col + c); };
      const int a = lane / 4, b = 2 * (lane % 4);
      out[lane][i] = trans ? Pair{m(b, a), m(b + 1, a)} : Pair{m(a, b), m(a, b + 1)};
    }
  }
}

// d[lane][e] += A (from a[lane][0..3]) * B (from b[lane][0..1]), m16n8k16.
void mma(double (&d)[32][4], const Pair (&a)[32][4], const Pair (&b)[32][2]) {
  double A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const int arow[4] = {g, g + 8, g, g + 8}, acol[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int r = 0; r < 4; ++r) {
      A[arow[r]][acol[r]] = a[lane][r].lo;
      A[arow[r]][acol[r] + 1] = a[lane][r].hi;
    }
    for (int r = 0; r < 2; ++r) {
      B[2 * t + 8 * r][g] = b[lane][r].lo;
      B[2 * t + 8 * r + 1][g] = b[lane][r].hi;
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const int crow[4] = {g, g, g + 8, g + 8}, ccol[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int e = 0; e < 4; ++e) {
      double s = 0;
      for (int k = 0; k < 16; ++k) s += A[crow[e]][k] * B[k][ccol[e]];
      d[lane][e] += s;
    }
  }
}

// An ldmatrix .x4 of two n-tiles' B operands: registers {r0, r1} feed n-tile 0, {r2, r3} n-tile 1.
void split_b(const Regs4& r, Pair (&b0)[32][2], Pair (&b1)[32][2]) {
  for (int lane = 0; lane < 32; ++lane) {
    b0[lane][0] = r[lane][0];
    b0[lane][1] = r[lane][1];
    b1[lane][0] = r[lane][2];
    b1[lane][1] = r[lane][3];
  }
}

int failures = 0;

void expect_close(double got, double want, const char* what, int r, int c) {
  if (std::fabs(got - want) > 1e-9) {
    if (failures++ < 5) std::printf("%s (%d, %d): got %.6f want %.6f\n", what, r, c, got, want);
  }
}

// S = Q K^T for a 16-row Q tile (at rows 16..31 of a 48-row tile) and 32 keys, as the forward kernel does.
void check_scores(int D) {
  Tile q(48, D), k(32, D);
  const int q_row0 = 16;
  double s[4][32][4] = {};  // 4 n-tiles of 8 keys
  for (int kk = 0; kk < D / 16; ++kk) {
    RowCol addr[32];
    Regs4 a;
    for (int lane = 0; lane < 32; ++lane) addr[lane] = lane_a(lane, q_row0, kk * 16);
    ldmatrix_x4(a, q, addr, false);
    for (int np = 0; np < 2; ++np) {
      Regs4 r;
      for (int lane = 0; lane < 32; ++lane) addr[lane] = lane_b_nk(lane, np * 16, kk * 16);
      ldmatrix_x4(r, k, addr, false);
      Pair b0[32][2], b1[32][2];
      split_b(r, b0, b1);
      mma(s[2 * np], a, b0);
      mma(s[2 * np + 1], a, b1);
    }
  }
  for (int nt = 0; nt < 4; ++nt) {
    for (int lane = 0; lane < 32; ++lane) {
      for (int e = 0; e < 4; ++e) {
        const RowCol rc = acc_elem(lane, e);
        const int i = rc.row, j = nt * 8 + rc.col;
        double want = 0;
        for (int d = 0; d < D; ++d) want += q.at(q_row0 + i, d) * k.at(j, d);
        expect_close(s[nt][lane][e], want, "S = Q K^T", i, j);
      }
    }
  }
}

// O = P V with P (16 x 32) held as score accumulators, V (32 keys x D), as the forward kernel does.
void check_output(int D) {
  Tile p(16, 32), v(32, D);
  double acc[4][32][4];  // P as 4 accumulator n-tiles
  for (int nt = 0; nt < 4; ++nt)
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < 4; ++e) {
        const RowCol rc = acc_elem(lane, e);
        acc[nt][lane][e] = p.at(rc.row, nt * 8 + rc.col);
      }
  std::vector<double> o(size_t(D / 8) * 32 * 4, 0.0);
  auto o_tile = [&](int dt) { return reinterpret_cast<double(*)[4]>(&o[size_t(dt) * 32 * 4]); };
  for (int kk = 0; kk < 2; ++kk) {
    Pair a[32][4];
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < 4; ++r) {
        const AccPair src = a_reg_from_acc(r);
        const double* tile = acc[2 * kk + src.hi][lane];
        a[lane][r] = Pair{tile[src.first], tile[src.first + 1]};
      }
    for (int dp = 0; dp < D / 16; ++dp) {
      RowCol addr[32];
      Regs4 r;
      for (int lane = 0; lane < 32; ++lane) addr[lane] = lane_b_kn(lane, kk * 16, dp * 16);
      ldmatrix_x4(r, v, addr, true);
      Pair b0[32][2], b1[32][2];
      split_b(r, b0, b1);
      mma(*reinterpret_cast<double(*)[32][4]>(o_tile(2 * dp)), a, b0);
      mma(*reinterpret_cast<double(*)[32][4]>(o_tile(2 * dp + 1)), a, b1);
    }
  }
  for (int dt = 0; dt < D / 8; ++dt)
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < 4; ++e) {
        const RowCol rc = acc_elem(lane, e);
        const int i = rc.row, d = dt * 8 + rc.col;
        double want = 0;
        for (int j = 0; j < 32; ++j) want += p.at(i, j) * v.at(j, d);
        expect_close(o_tile(dt)[lane][e], want, "O = P V", i, d);
      }
}

}  // namespace

int main() {
  std::srand(1);
  for (int D : {64, 128}) {
    check_scores(D);
    check_output(D);
  }
  if (failures) {
    std::printf("%d mismatches\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
