"""Grouped 1-D convolution through the FFT, for the long kernel of the positional embedding.

wav2vec 2.0's positional convolution has kernel 128 (16 groups of 48 channels at BASE): direct
convolution costs T * 128 * 48 multiply-adds per output channel, and on CPU its backward is slower
still. Through the FFT (overlap-save blocks of N = 256 samples) the same correlation costs transforms
of the blocks and of the kernel plus one small (48 x 48) complex matrix product per group and
frequency. The backward is written by hand: autograd's own rfft backward runs a full complex FFT of
the zero-padded kernel, which costs more than the convolution it replaces. Results equal `F.conv1d`
up to float rounding (~1e-6 relative). Used on CPU only; cuDNN's direct kernels suit the GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwav2vec.models.cpu.switch import use_cpu_kernels

# Below this kernel size direct convolution wins: the FFT's cost does not grow with the kernel.
MIN_FFT_KERNEL = 32
BLOCK_KERNELS = 2  # overlap-save block length, in kernels


def fast_fft_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (pocketfft is fastest on such lengths; primes are very slow)."""
    best = 1 << max(n - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            length = power35
            while length < n:
                length *= 2
            best = min(best, length)
            power35 *= 3
        power5 *= 5
    return best


def fft_block_length(padded_length: int, kernel: int) -> int:
    """FFT length N of the overlap-save blocks: one block for short inputs, else about twice the kernel
    (the kernel's spectrum, the costliest part, then does not grow with the input)."""
    return fast_fft_length(min(padded_length, BLOCK_KERNELS * kernel))


class _FFTGroupedCorrelation(torch.autograd.Function):
    """y[b, o, t] = sum_{i in group(o), k} w[o, i, k] x[b, i, t + k - padding]  (what conv1d computes),
    by overlap-save: the padded input is cut into blocks of N samples that overlap by K - 1, and each
    block's circular correlation with the kernel is exact for its first S = N - K + 1 outputs."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # complex64 math, also under autocast
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int, groups: int, N: int) -> torch.Tensor:
        # x: (B, C_in, T); weight: (C_out, C_in / groups, K) -> (B, C_out, T + 2 * padding - K + 1)
        B, C_in, T = x.shape
        C_out, C_group, K = weight.shape
        out_length = T + 2 * padding - K + 1
        S = N - K + 1
        n_blocks = -(-out_length // S)
        padded = F.pad(x, (padding, n_blocks * S + K - 1 - T - padding))  # (B, C_in, n_blocks * S + K - 1)
        blocks = padded.unfold(-1, N, S)  # (B, C_in, n_blocks, N), a view
        x_freq = _to_groups(torch.fft.rfft(blocks, n=N), groups)  # (G, F, C_group, B * n_blocks)
        w_freq = _weight_spectrum(weight, groups, N)  # (G, F, O, C_group)
        # correlation multiplies by the kernel's conjugate spectrum: conj(w) x = conj(w conj(x)), so only
        # the small block spectra are conjugated, never the large kernel one
        y_freq = torch.matmul(w_freq, x_freq.conj()).conj()  # (G, F, O, B * n_blocks)
        y = torch.fft.irfft(_from_groups(y_freq, B), n=N)[..., :S]  # (B, C_out, n_blocks, S)
        ctx.save_for_backward(x_freq, w_freq)
        ctx.sizes = (T, K, padding, out_length, N, S, n_blocks)
        return y.reshape(B, C_out, n_blocks * S)[..., :out_length]

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_y: torch.Tensor):
        x_freq, w_freq = ctx.saved_tensors
        T, K, padding, out_length, N, S, n_blocks = ctx.sizes
        B, C_out = grad_y.shape[:2]
        groups = x_freq.shape[0]
        # block j's output n received grad_y[j * S + n]; its outputs n >= S were cut off
        grad_blocks = F.pad(grad_y, (0, n_blocks * S - out_length)).reshape(B, C_out, n_blocks, S)
        g_freq = _to_groups(torch.fft.rfft(grad_blocks, n=N), groups)  # (G, F, O, B * n_blocks)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # block sample m met w[k] at output m - k (< S, so no wrap): a convolution with the kernel,
            # spectrum w^T g, formed as (g^T w)^T so the large w_freq is read in place
            gx_freq = torch.matmul(g_freq.transpose(-1, -2), w_freq).transpose(-1, -2)  # (G, F, C_group, B * n_blocks)
            grad_blocks_x = torch.fft.irfft(_from_groups(gx_freq, B), n=N)  # (B, C_in, n_blocks, N)
            if n_blocks == 1:  # the block is the whole padded input
                grad_padded = grad_blocks_x[:, :, 0]
            else:
                # overlap-add: block j covers padded samples [j * S, j * S + N); with several blocks
                # N >= 2K (fft_block_length), so S > K - 1 and only neighbours overlap
                heads = grad_blocks_x[..., :S].reshape(B, -1, n_blocks * S)
                tails = F.pad(grad_blocks_x[..., S:], (0, S - (K - 1))).reshape(B, -1, n_blocks * S)
                grad_padded = F.pad(heads, (0, S)) + F.pad(tails, (S, 0))
            grad_x = grad_padded[..., padding : padding + T]
        if ctx.needs_input_grad[1]:
            # w[k] met block sample n + k at every output n of every block: sum over blocks and batch
            gw_conj = torch.matmul(g_freq, x_freq.conj().transpose(-1, -2))  # (G, F, O, C_group): conj(g) x^T, conjugated
            grad_w = _weight_from_conj_spectrum(gw_conj, N, K)
        return grad_x, grad_w, None, None, None


def _to_groups(spectrum: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, n_blocks, F) -> (G, F, C / G, B * n_blocks), contiguous: one matrix per group and frequency."""
    B, C, n_blocks, n_freq = spectrum.shape
    grouped = spectrum.view(B, groups, C // groups, n_blocks, n_freq).permute(1, 4, 2, 0, 3)
    return grouped.reshape(groups, n_freq, C // groups, B * n_blocks)


def _from_groups(spectrum: torch.Tensor, batch: int) -> torch.Tensor:
    """(G, F, C / G, B * n_blocks) -> (B, C, n_blocks, F)."""
    G, n_freq, C_group, columns = spectrum.shape
    blocks = spectrum.view(G, n_freq, C_group, batch, columns // batch).permute(3, 0, 2, 4, 1)
    return blocks.reshape(batch, G * C_group, columns // batch, n_freq)


def _weight_spectrum(weight: torch.Tensor, groups: int, N: int) -> torch.Tensor:
    """(C_out, C_group, K) -> (G, F, O, C_group), contiguous: the zero-padded kernel's spectrum."""
    C_out, C_group, K = weight.shape
    spectrum = torch.fft.rfft(weight, n=N).view(groups, C_out // groups, C_group, -1)  # (G, O, C_group, F)
    return spectrum.permute(0, 3, 1, 2).contiguous()


def _weight_from_conj_spectrum(spectrum_conj: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """(G, F, O, C_group) conjugated spectrum -> (C_out, C_group, K) kernel-shaped signal."""
    G, n_freq, per_group, C_group = spectrum_conj.shape
    spectrum = spectrum_conj.permute(0, 2, 3, 1).contiguous().conj_physical_()  # (G, O, C_group, F)
    return torch.fft.irfft(spectrum, n=N)[..., :K].reshape(G * per_group, C_group, K)


class FFTConv1d(nn.Conv1d):
    """`nn.Conv1d` (same parameters and state dict) that convolves through the FFT on CPU when the
    kernel is long; stride 1, dilation 1 and zero padding only, as the positional embedding uses."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, groups: int = 1, bias: bool = True
    ):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T + 2p - K + 1)
        if not use_cpu_kernels(x) or self.kernel_size[0] < MIN_FFT_KERNEL:
            return super().forward(x)
        N = fft_block_length(x.shape[-1] + 2 * self.padding[0], self.kernel_size[0])
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # half types: fp32 spectra
        y = _FFTGroupedCorrelation.apply(x.to(dtype), self.weight.to(dtype), self.padding[0], self.groups, N)
        if self.bias is not None:
            y = y + self.bias.to(dtype)[:, None]
        return y.to(x.dtype)
