from usaid.data.gaussian_noise_dataset import GaussianNoiseDataset

__all__ = ['GaussianNoiseDataset']
